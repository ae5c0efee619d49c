"""systemd's service protocol without a dependency: sd_notify states, the watchdog, socket activation."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from mailrelay.errors import ConfigError

log = logging.getLogger("mailrelay.systemd")

# sd_listen_fds(3): passed sockets start at fd 3 (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", newline-separated assignments) to $NOTIFY_SOCKET, as sd_notify(3) does.

    Returns False when not run by systemd (no $NOTIFY_SOCKET) or when the message could not be sent: a
    service manager that went away must never stop the relay.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        # Linux abstract namespace: systemd writes a leading '@' for the leading NUL byte.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager (%s): %s", state.split("\n", 1)[0], exc)
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC that systemd ≥ 253 requires to match a reload to its request."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between two pings that systemd expects ($WATCHDOG_USEC), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    # sd_watchdog_enabled(3): the variables are meant for WATCHDOG_PID, not for a child that inherits them.
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000


def start_watchdog() -> asyncio.Task[None] | None:
    """Ping WATCHDOG=1 every half interval from the event loop, so a loop that hangs is restarted."""
    interval = watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        # Half the interval, as sd_watchdog_enabled(3) recommends: one late ping must not kill the relay.
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)

    return asyncio.get_running_loop().create_task(ping(), name="systemd-watchdog")


def listen_fds(*, unset_environment: bool = True) -> list[socket.socket]:
    """The sockets systemd passed by socket activation ($LISTEN_FDS/$LISTEN_PID, from fd 3), or [].

    Like sd_listen_fds(3), the variables are removed afterwards so a child process does not take the
    sockets for its own, and the descriptors are marked close-on-exec.
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        # socket(fileno=...) asks the kernel for the family and type of the passed descriptor.
        sockets.append(socket.socket(fileno=fd))
    return sockets


def passed_smtp_socket() -> socket.socket | None:
    """The one listening socket of mailrelay.socket, or None when not socket-activated."""
    sockets = listen_fds()
    if not sockets:
        return None
    if len(sockets) > 1 or sockets[0].type != socket.SOCK_STREAM:
        kinds = ", ".join(s.type.name for s in sockets)
        for sock in sockets:
            sock.close()
        raise ConfigError(
            "mailrelay.socket",
            ("ListenStream",),
            f"systemd passed {len(sockets)} socket(s) ({kinds}); mailrelay takes exactly one stream socket",
        )
    return sockets[0]
