"""The SMTP port shared by the workers of `serve --workers N`: bound once by the parent, and accepted on by
each worker only while it serves no more sessions than the least busy of its siblings."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass

from mailrelay.config import Listen
from mailrelay.errors import ConfigError

log = logging.getLogger("mailrelay.smtp")

# Why not SO_REUSEPORT: the kernel hashes each connection to one worker when it is made, whatever that
# worker already serves. An MTA keeps a few sessions open for many messages (Postfix's connection cache
# toward a relayhost), so the split stays as it fell: 10 sessions fall 8:2 or worse in about 1 start in 9,
# and then one core waits while the other queues (issue 8, by hand: a round of 20 KB rejections split 8:2
# relayed 377 msg/s, rounds split 5:5 507-549; bench/README.md). nginx has the same remedy for the same
# reason (ngx_accept_disabled); Postfix's smtpd serves one session per process and accepts only when free.

# How long a connection waits for the least busy worker before a busier one takes it (a sibling whose loop
# is held up must not hold up new sessions), and how often a busier worker looks again meanwhile. Long
# enough to outlast a scheduler's stall: on a 2-vCPU host whose hypervisor took up to 0.87 of the cores,
# 10 sessions opened one after another (test_serve_workers) ended 6:4 in 1 start of 8 with 20 ms, and they
# stay where they fall; 5:5 in all 16 with 250 ms. A client waits minutes for the greeting (RFC 5321
# section 4.5.3.2.1), so a quarter of a second once, while a sibling is stuck, costs no one.
ACCEPT_PATIENCE = 0.25
RECHECK = 0.002
# What asyncio does when the process is out of descriptors or memory (selector_events._accept_connection):
# stop accepting for a second.
PAUSE_AFTER_ERROR = 1.0


def bind(listen: Listen, backlog: int, source: str) -> list[socket.socket]:
    """Listening sockets for `listen`, one per address it resolves to, as asyncio's create_server binds."""
    try:
        infos = socket.getaddrinfo(
            listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        problem = f"cannot resolve {listen.host!r}: {exc.strerror}"
        raise ConfigError(source, ("smtp.listen",), problem) from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio: :: and 0.0.0.0 both
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(source, ("smtp.listen",), f"cannot listen on {listen}: {exc.strerror}") from exc
    return sockets


@dataclass
class SessionCounts:
    """Open sessions per worker, in memory every worker maps (multiprocessing RawArray); each worker writes
    only its own slot, so no lock: a sibling's count read a moment late only delays one decision."""

    slots: MutableSequence[int]
    index: int

    def opened(self) -> None:
        self.slots[self.index] += 1

    def closed(self) -> None:
        self.slots[self.index] -= 1

    def least_busy(self) -> bool:
        mine = self.slots[self.index]
        return all(mine <= n for i, n in enumerate(self.slots) if i != self.index)


@dataclass(frozen=True)
class SharedListen:
    """What a worker gets from the parent: the listening sockets and the session counts."""

    sockets: list[socket.socket]
    counts: SessionCounts


class _Seat:
    """One accepted connection's place in the count, given back exactly once."""

    __slots__ = ("_counts",)

    def __init__(self, counts: SessionCounts) -> None:
        counts.opened()
        self._counts: SessionCounts | None = counts

    def release(self) -> None:
        if self._counts is not None:
            self._counts.closed()
            self._counts = None


class BalancedListener:
    """Accepts on the shared sockets while this worker is the least busy, or once a connection has waited
    ACCEPT_PATIENCE for the others; hands each connection to a protocol made by `factory`, which calls the
    release function it is given when the connection is lost."""

    def __init__(
        self,
        shared: SharedListen,
        factory: Callable[[Callable[[], None]], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.sockets = shared.sockets
        self._counts = shared.counts
        self._factory = factory
        self._loop = loop
        self._waiting_since: float | None = None
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._readable, sock)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _pause(self, seconds: float) -> None:
        if self._paused is not None:
            return  # another socket's callback paused already
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._closed:
            return
        waiting = select.poll()  # not select(): a descriptor past FD_SETSIZE (1024) would be refused
        for sock in self.sockets:
            waiting.register(sock, select.POLLIN)
        if not waiting.poll(0):
            self._waiting_since = None  # a sibling took what was waiting: the next one starts afresh
        self.start()

    def _my_turn(self) -> bool:
        if self._counts.least_busy():
            self._waiting_since = None
            return True
        now = self._loop.time()
        if self._waiting_since is None:
            self._waiting_since = now
        # Once the others have left connections waiting this long, take all that wait, not one per
        # ACCEPT_PATIENCE: a sibling still starting, or stuck, must not make a burst queue for seconds.
        return now - self._waiting_since >= ACCEPT_PATIENCE

    def _readable(self, sock: socket.socket) -> None:
        while not self._closed:
            if not self._my_turn():
                self._pause(RECHECK)
                return
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                self._waiting_since = None  # a sibling was quicker
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                # Out of descriptors or memory (or worse): never spin on a socket that stays readable.
                log.error("cannot accept a connection: %s; accepting again in %.0f s", exc, PAUSE_AFTER_ERROR)
                self._pause(PAUSE_AFTER_ERROR)
                return
            conn.setblocking(False)
            seat = _Seat(self._counts)
            task = self._loop.create_task(self._connect(conn, seat))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, seat: _Seat) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: self._factory(seat.release), conn)
        except Exception as exc:  # the connection, not the listener: the next one is accepted as before
            log.warning("cannot serve an accepted connection: %s", exc)
            conn.close()
            seat.release()
