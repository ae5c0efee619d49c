"""A relay in this process (mailrelay.app.build + start_smtp_server, as tests/conftest.py does) and Postfix's
smtp-sink on a port of our choosing, so that a healthy next hop can replace a faulty one on that port."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
from sqlalchemy import func, select

from mailrelay.app import Components, build
from mailrelay.config import load_settings
from mailrelay.smtp.server import start_smtp_server
from mailrelay.store import ReferralEvent
from tests.reliability.common import wait_listening, write_config
from tests.support.sinks import SMTP_SINK, SinkDump, parse_sink_dump, require_tool


@dataclass
class InProcessRelay:
    port: int
    components: Components

    def events(self) -> int:
        with self.components.store.sessions() as session:
            return int(session.scalar(select(func.count(ReferralEvent.id))) or 0)

    async def send(self, sender: str, recipients: list[str], content: bytes, timeout: float = 60) -> str:
        """The reply to the final dot (or the refusal) as "CODE text"; connection errors by class name."""
        try:
            _refused, reply = await aiosmtplib.send(
                content,
                sender=sender,
                recipients=recipients,
                hostname="127.0.0.1",
                port=self.port,
                timeout=timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return f"{first.code} {first.message}"
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            return type(exc).__name__
        return f"250 {reply}"


@asynccontextmanager
async def relay_in_process(base: Path, next_hop_port: int, **config: object) -> AsyncIterator[InProcessRelay]:
    settings = load_settings(write_config(base, port=0, next_hop_port=next_hop_port, **config))  # type: ignore[arg-type]
    components = build(settings)
    server = await start_smtp_server(settings, components.handler, components.metrics, port=0)
    try:
        yield InProcessRelay(server.sockets[0].getsockname()[1], components)
    finally:
        server.close()
        await server.wait_closed()
        components.store.close()


class SmtpSink:
    """/usr/sbin/smtp-sink with fault options on a given port, dumping each transaction (-d)."""

    def __init__(self, port: int, *options: str, dump: bool = True) -> None:
        self.port = port
        self.dump = dump
        self.options = list(options)
        self.dump_dir = Path(tempfile.mkdtemp(prefix="reliability-smtp-sink-"))
        # smtp-sink drops to the -u user before writing its dumps.
        self.dump_dir.chmod(0o1777)
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> SmtpSink:
        args = [require_tool(SMTP_SINK, "postfix"), "-h", "smtp-sink.reliability.test"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        if self.dump:
            args += ["-d", f"{self.dump_dir}/m."]
        args += [*self.options, f"127.0.0.1:{self.port}", "256"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        await wait_listening(self.port, self.process, "smtp-sink")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        await asyncio.sleep(0)

    def messages(self) -> list[SinkDump]:
        return [parse_sink_dump(p.read_bytes()) for p in sorted(self.dump_dir.rglob("m.*"))]

    def cleanup(self) -> None:
        shutil.rmtree(self.dump_dir, ignore_errors=True)
