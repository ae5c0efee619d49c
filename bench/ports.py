"""Free ports on 127.0.0.1 for servers that the bench and the tests start later, in other processes."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

# Where the kernel takes every connect()'s local port and bind()'s port 0 (net.ipv4.ip_local_port_range).
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

# Ports already handed out by this process: servers started at once (in threads) never get the same one.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _outside_the_ephemeral_range() -> range:
    """Ports the kernel never picks by itself. A port that bind() to 0 found free, and that a server binds
    seconds later, can meanwhile be a client's (connect() takes its local port from the same range, even
    ones first, and keeps it 60 s in TIME_WAIT after a close): a worker of `serve --workers 2` then died at
    start on its metrics port, the first free port + 1, and the bench ablation test failed in CI."""
    try:
        low, high = (int(bound) for bound in EPHEMERAL_RANGE.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    below, above = range(max(1024, low - 16384), low), range(high + 1, 65536)
    # A machine whose range leaves little on either side gets the larger side, or, with none, every port.
    widest = max(below, above, key=len)
    return widest if len(widest) >= 1024 else range(1024, 65536)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (mailrelay's worker i serves metrics on the first + i)."""
    candidates = _outside_the_ephemeral_range()
    for _ in range(1000):
        first = random.randrange(candidates.start, candidates.stop - count + 1)
        wanted = range(first, first + count)
        with _handed_out_lock:
            if _handed_out.intersection(wanted) or not all(_bindable(port) for port in wanted):
                continue
            _handed_out.update(wanted)
        return first
    raise RuntimeError(f"no {count} consecutive free ports in {candidates}")


def free_port() -> int:
    return free_ports(1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
