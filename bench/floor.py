"""The floor: the least an aiosmtpd → aiosmtplib proxy does, shaped like mailrelay (MAIL and RCPT mirrored
live, one next-hop connection per client session, DATA forwarded as received). Nothing here parses, logs or
counts, so whatever mailrelay costs above this is mailrelay's own."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from typing import Any

import aiosmtplib
import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session


class FloorHandler:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hops: dict[int, aiosmtplib.SMTP] = {}

    async def _hop(self, session: Session) -> aiosmtplib.SMTP:
        client = self.hops.get(id(session))
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(hostname=self.host, port=self.port, start_tls=False, timeout=60)
            await client.connect()
            await client.ehlo()
            self.hops[id(session)] = client
        return client

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        client = await self._hop(session)
        reply = await client.execute_command(b"MAIL", b"FROM:<" + address.encode() + b">")
        if reply.code == 250:
            envelope.mail_from = address
        return f"{reply.code} {reply.message}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        client = self.hops[id(session)]
        reply = await client.execute_command(b"RCPT", b"TO:<" + address.encode() + b">")
        if reply.code == 250:
            envelope.rcpt_tos.append(address)
        return f"{reply.code} {reply.message}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        client = self.hops[id(session)]
        assert client.protocol is not None
        try:
            reply = await client.protocol.execute_data_command(envelope.original_content or b"", timeout=60)
        except aiosmtplib.SMTPDataError as exc:
            return f"{exc.code} {exc.message}"
        return f"{reply.code} {reply.message}"

    def closed(self, session: Session) -> None:
        client = self.hops.pop(id(session), None)
        if client is not None:
            _background.add(asyncio.ensure_future(_quit(client)))


_background: set[asyncio.Future[Any]] = set()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(client.quit(), timeout=5)
    except Exception:
        client.close()


class FloorSMTP(SMTP):
    def __init__(self, handler: FloorHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._floor = handler

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        if session is not None:
            self._floor.closed(session)


async def serve(listen_port: int, hop_port: int, reuse_port: bool) -> None:
    handler = FloorHandler("127.0.0.1", hop_port)
    loop = asyncio.get_running_loop()

    def factory() -> FloorSMTP:
        # The same aiosmtpd settings as mailrelay's server, so both pay the same for the inbound side.
        return FloorSMTP(
            handler,
            hostname="floor",
            ident="floor",
            data_size_limit=33554432,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
            loop=loop,
        )

    server = await loop.create_server(factory, "127.0.0.1", listen_port, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def _run(listen_port: int, hop_port: int, reuse_port: bool) -> None:
    # uvloop, as mailrelay serves by default and as the floor is defined.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(listen_port, hop_port, reuse_port=reuse_port))


def _worker(listen_port: int, hop_port: int) -> None:
    _run(listen_port, hop_port, reuse_port=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--next-hop-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers <= 1:
        _run(args.port, args.next_hop_port, reuse_port=False)
        return 0
    # The same process model as `mailrelay serve --workers N`, so the ratio compares like with like.
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker, args=(args.port, args.next_hop_port)) for _ in range(args.workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.start()
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
