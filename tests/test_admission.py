"""Issue 5: connection caps answer 421 and keep the relay serving others; SIGTERM refuses new sessions
with 421 4.3.2 while transactions in flight finish, then exits 0 with nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from bench.ports import free_port
from conftest import SettingsFactory
from support.sinks import RecordingSink

E2E = Path(__file__).resolve().parent / "e2e"
REJECTION = (E2E / "rejection_en.eml").read_bytes()


async def greeting(host: str, port: int, local: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0))
    try:
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_per_client_cap_answers_421_and_another_client_is_still_served(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        cap = relay.components.settings.smtp.max_connections_per_client
        idle = [await asyncio.open_connection(relay.host, relay.port) for _ in range(cap)]
        for reader, _writer in idle:
            assert (await reader.readline()).startswith(b"220")
        # One more from the same address: refused politely, not left hanging.
        assert (await greeting(relay.host, relay.port)).startswith(b"421 4.7.0")
        # A client from another address (127.0.0.2 is loopback too) gets its greeting.
        assert (await greeting(relay.host, relay.port, local="127.0.0.2")).startswith(b"220")
        for _reader, writer in idle:
            writer.close()
    refused = relay.components.metrics.connections_refused.labels(reason="too_many_from_client")._value.get()
    assert refused == 1


async def test_slots_are_given_back_when_connections_close(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        cap = relay.components.settings.smtp.max_connections_per_client
        for _ in range(cap + 5):
            assert (await greeting(relay.host, relay.port)).startswith(b"220")
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert relay.components.handler.total_connections == 0
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
    assert len(sink.messages) == 1


async def test_sigterm_refuses_new_sessions_finishes_the_transaction_in_flight_and_exits_0(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    async with RecordingSink(stall=set()) as sink:
        settings = make_settings(sink.port)
        port = free_port()
        config = settings.source.read_text(encoding="utf-8").replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'
        )
        settings.source.write_text(config, encoding="utf-8")
        # The next hop is slow to answer the final dot: the transaction is in flight when SIGTERM comes.
        slow = asyncio.Event()
        from support.sinks import _SinkHandler

        original = _SinkHandler.handle_DATA

        async def slow_data(self, server, session, envelope):  # type: ignore[no-untyped-def]
            slow.set()
            await asyncio.sleep(1.5)
            return await original(self, server, session, envelope)

        _SinkHandler.handle_DATA = slow_data  # type: ignore[method-assign]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailrelay", "serve", "--config", str(settings.source),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
            )  # fmt: skip
            for _ in range(100):
                try:
                    await greeting("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            sending = asyncio.ensure_future(
                aiosmtplib.send(
                    REJECTION, sender="recruit@acme.co.jp", recipients=["a@gmail.example"],
                    hostname="127.0.0.1", port=port, timeout=30,
                )
            )  # fmt: skip
            await asyncio.wait_for(slow.wait(), 10)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert (await greeting("127.0.0.1", port)).startswith(b"421 4.3.2")
            refused, reply = await sending
            assert refused == {} and reply.startswith("2")
            stderr = (await process.communicate())[1].decode()
        finally:
            _SinkHandler.handle_DATA = original  # type: ignore[method-assign]
    assert process.returncode == 0, stderr
    assert len(sink.messages) == 1


async def test_a_session_open_at_shutdown_hears_421_at_its_next_mail_and_is_closed(
    start_relay, make_settings: SettingsFactory
) -> None:
    """Found by review: after SIGTERM a session's next MAIL got 421 4.3.2 but the connection stayed open
    (until smtp.timeout); a 421 closes the channel (RFC 5321 §3.8), as Postfix's smtpd does after each."""
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        try:
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO client.test\r\n")
            while not (await reader.readline()).startswith(b"250 "):
                pass
            relay.components.handler.closing = True  # what app.drain does on SIGTERM
            writer.write(b"MAIL FROM:<hr@acme.co.jp>\r\n")
            assert (await reader.readline()).startswith(b"421 4.3.2")
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
    assert sink.events == []
