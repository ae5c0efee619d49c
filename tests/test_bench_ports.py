"""Ports for servers started later (bench/ports.py): outside the kernel's ephemeral range, where a client
connection could take one before the server binds it, and never the same one twice in a process."""

from __future__ import annotations

import socket

from bench.ports import EPHEMERAL_RANGE, free_port, free_ports


def test_ports_are_outside_the_ephemeral_range_and_handed_out_once() -> None:
    low, high = (int(bound) for bound in EPHEMERAL_RANGE.read_text(encoding="ascii").split())
    firsts = [free_ports(2) for _ in range(50)]
    singles = [free_port() for _ in range(50)]
    handed_out = [port for first in firsts for port in (first, first + 1)] + singles
    assert len(set(handed_out)) == len(handed_out)
    if low - 1024 >= 1024 or 65535 - high >= 1024:  # room outside the range (Linux's default: 32768-60999)
        assert not [port for port in handed_out if low <= port <= high]
    # Free when handed out: each binds.
    for port in handed_out[:10]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
