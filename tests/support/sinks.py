"""Real SMTP peers for tests: a recording aiosmtpd sink with fault modes, Postfix's smtp-sink and smtp-source,
swaks, and a raw-socket client for exact-byte sessions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.ports import free_port

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")


class ToolMissing(RuntimeError):
    """A test tool is not installed; the message names the Debian package (scripts/bootstrap installs it)."""


def require_tool(path: Path | str, package: str) -> str:
    """The tool's path, or ToolMissing naming its Debian package: tests fail, they never skip."""
    found = str(path) if Path(path).is_absolute() and os.access(path, os.X_OK) else shutil.which(str(path))
    if not found:
        raise ToolMissing(f"{path} is missing: install the Debian package {package} (scripts/bootstrap does)")
    return found


# --- RecordingSink ----------------------------------------------------------------------------------


@dataclass
class Delivered:
    """One transaction as the sink received it."""

    mail_from: str
    rcpt_tos: list[str]
    # envelope.original_content: the exact bytes after the final dot, dot-unstuffed (RFC 5321 §4.5.2).
    content: bytes
    mail_options: list[str] = field(default_factory=list)
    # The reply the sink gave to the final dot ("" if it hung up or stalled instead).
    reply: str = "250 2.0.0 OK"

    @property
    def original_content(self) -> bytes:
        return self.content


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP with the sink's per-command faults applied before the real command runs."""

    def __init__(self, sink: RecordingSink, handler: _SinkHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sink = sink
        for command, method in list(self._smtp_methods.items()):
            if sink.faults_for(command):
                self._smtp_methods[command] = self._with_fault(command, method)

    def _with_fault(
        self, command: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        @functools.wraps(method)  # keeps aiosmtpd's @syntax attributes, which HELP and EHLO-only checks read
        async def faulty(arg: str | None) -> None:
            if not await self._sink.apply_fault(self, command):
                await method(arg)

        return faulty

    async def _handle_client(self) -> None:
        if await self._sink.apply_fault(self, "CONNECT"):
            return
        await super()._handle_client()


class _SinkHandler:
    def __init__(self, sink: RecordingSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        hidden = set()
        if not self._sink.smtputf8:
            hidden.add("SMTPUTF8")
        if not self._sink.eightbitmime:
            hidden.add("8BITMIME")
        return [line for line in responses if line[4:].split(" ")[0].upper() not in hidden]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        self._sink.events.append(("MAIL", address))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        self._sink.events.append(("RCPT", address))
        refusal = self._sink.refuse_recipients.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self._sink
        content = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        sink.events.append(("DATA", mail_from))

        def record(reply: str) -> Delivered:
            return Delivered(mail_from, list(envelope.rcpt_tos), content, list(envelope.mail_options), reply)

        if "." in sink.hang_up:
            sink.rejected.append(record(""))
            assert server.transport is not None
            server.transport.close()
            await sink.wait_closed_forever()
        if "." in sink.stall:
            sink.rejected.append(record(""))
            await sink.wait_closed_forever()
        reply = sink.replies.get(".", "250 2.0.0 OK")
        if reply.startswith("2"):
            sink.messages.append(record(reply))
            sink.notify()
        else:
            sink.rejected.append(record(reply))
        return reply


class RecordingSink:
    """An aiosmtpd next hop on 127.0.0.1:<free port> in the running loop, recording every transaction.

    Faults, per instance (command names as in Postfix's smtp-sink: CONNECT, EHLO, MAIL, RCPT, DATA, "."
    for the end of data, RSET, QUIT, …):

        RecordingSink(refuse_recipients={"gone@x.example": "550 5.1.1 No such user"})
        RecordingSink(replies={".": "451 4.3.0 Try again later"})    # or "550 5.7.1 …" to the final dot
        RecordingSink(replies={"DATA": "554 5.5.1 No valid recipients"})  # to the DATA command itself
        RecordingSink(replies={"CONNECT": "421 4.3.2 Not now"})      # greeting; any 421 also hangs up
        RecordingSink(replies={"MAIL": "421 4.3.2 Shutting down"})
        RecordingSink(hang_up={"."})    # close the connection after the data, without replying
        RecordingSink(stall={"."})      # never answer the final dot
        RecordingSink(smtputf8=False, eightbitmime=False)  # do not advertise them in EHLO

    `messages` holds the accepted transactions (answered 2xx), `rejected` the ones that got all their data
    but another reply (or none), `events` every MAIL/RCPT/DATA in arrival order.
    """

    def __init__(
        self,
        *,
        refuse_recipients: Mapping[str, str] | None = None,
        replies: Mapping[str, str] | None = None,
        hang_up: Collection[str] = (),
        stall: Collection[str] = (),
        smtputf8: bool = True,
        eightbitmime: bool = True,
        hostname: str = "sink.test",
        data_size_limit: int | None = None,
        timeout: float = 60,
    ) -> None:
        self.refuse_recipients = {k.lower(): v for k, v in (refuse_recipients or {}).items()}
        self.replies = {k.upper(): v for k, v in (replies or {}).items()}
        self.hang_up = {c.upper() for c in hang_up}
        self.stall = {c.upper() for c in stall}
        self.smtputf8 = smtputf8
        self.eightbitmime = eightbitmime
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self.timeout = timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.messages: list[Delivered] = []
        self.rejected: list[Delivered] = []
        self.events: list[tuple[str, str]] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[_SinkSMTP] = []
        self._closed: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()

    def faults_for(self, command: str) -> bool:
        return command in self.replies or command in self.hang_up or command in self.stall

    async def apply_fault(self, protocol: SMTP, command: str) -> bool:
        """Act out the fault configured for `command`; True if it replaced the command's normal handling."""
        if command in self.stall:
            await self.wait_closed_forever()
        if command in self.hang_up:
            assert protocol.transport is not None
            protocol.transport.close()
            return True
        reply = self.replies.get(command)
        if reply is None:
            return False
        await protocol.push(reply)
        if reply.startswith("421"):
            # RFC 5321 §3.8: a 421 means the server is closing the channel.
            assert protocol.transport is not None
            protocol.transport.close()
        return True

    async def wait_closed_forever(self) -> None:
        """Block this session until the sink stops (then the session is cancelled with its connection)."""
        assert self._closed is not None
        await asyncio.shield(self._closed)
        raise asyncio.CancelledError

    def notify(self) -> None:
        self._changed.set()

    def open_connections(self) -> int:
        """Client connections not yet closed: a next-hop connection the relay leaked stays counted."""
        return sum(1 for protocol in self._protocols if protocol.transport is not None)

    async def wait_for_open_connections(self, count: int, timeout: float = 10) -> int:
        """Wait until `count` client connections are open (or `timeout` passes); return how many are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_connections() != count and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return self.open_connections()

    async def wait_for_messages(self, count: int, timeout: float = 10) -> list[Delivered]:
        """Wait until at least `count` transactions were accepted; return them."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def _make_protocol(self) -> _SinkSMTP:
        protocol = _SinkSMTP(
            self,
            _SinkHandler(self),
            hostname=self.hostname,
            enable_SMTPUTF8=self.smtputf8,
            decode_data=False,
            data_size_limit=self.data_size_limit,
            timeout=self.timeout,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.append(protocol)
        self.connections += 1
        return protocol

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._server = await loop.create_server(self._make_protocol, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Close connections first: connection_lost cancels each session, stalled ones included.
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        assert self._closed is not None
        if not self._closed.done():
            self._closed.set_result(None)
        # Let every session's task see its connection go, so none is left pending when the loop closes.
        tasks = [p._handler_coroutine for p in self._protocols if p._handler_coroutine is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# --- Postfix smtp-sink ------------------------------------------------------------------------------


@dataclass
class SinkDump:
    """One transaction from smtp-sink's -d dump. smtp-sink writes text lines: line ends become LF."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # header and body as received, LF line ends, without smtp-sink's own headers
    raw: bytes


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, without connecting (a probe would be a session)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
                return True
    return False


class PostfixSmtpSink:
    """/usr/sbin/smtp-sink on 127.0.0.1:<free port>, with its fault options passed through.

        with PostfixSmtpSink("-r", ".") as sink:         # 450 to the final dot
        with PostfixSmtpSink("-f", "RCPT") as sink:      # 500 to every RCPT
        with PostfixSmtpSink("-q", ".") as sink:         # hang up after the data
        with PostfixSmtpSink("-Q", "MAIL") as sink:      # 421 to MAIL and hang up
        with PostfixSmtpSink("-W", ".:10") as sink:      # 10 s before answering the final dot

    Also usable with `async with` (the start-up wait then does not block the loop). Each transaction is
    dumped (-d) so `messages()` can read it back; dump=False turns that off for speed.
    """

    def __init__(
        self, *options: str, dump: bool = True, hostname: str = "smtp-sink.test", backlog: int = 256
    ) -> None:
        self.options = list(options)
        self.dump = dump
        self.hostname = hostname
        self.backlog = backlog
        self.host = "127.0.0.1"
        self.port = 0
        self.dump_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        binary = require_tool(SMTP_SINK, "postfix")
        if self.dump:
            # smtp-sink drops to the -u user before writing; pytest's tmp_path sits in a 0700 directory,
            # so the dumps go to a world-writable directory of their own under /tmp.
            self.dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
            self.dump_dir.chmod(0o1777)
        self.port = free_port()
        args = [binary, "-h", self.hostname]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        if self.dump_dir is not None:
            args += ["-d", f"{self.dump_dir}/m."]
        args += [*self.options, f"{self.host}:{self.port}", str(self.backlog)]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            _, err = self.process.communicate()
            raise RuntimeError(
                f"smtp-sink exited with {self.process.returncode}: {err.decode(errors='replace')}"
            )
        return _listening(self.port)

    def start(self, timeout: float = 10) -> Self:
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self._started():
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"smtp-sink did not listen on {self.host}:{self.port} within {timeout} s")
            time.sleep(0.01)
        return self

    async def start_async(self, timeout: float = 10) -> Self:
        self._spawn()
        async with asyncio.timeout(timeout):
            while not self._started():
                await asyncio.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.communicate()
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
            self.dump_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            return await self.start_async()
        except BaseException:
            self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def messages(self) -> list[SinkDump]:
        """The dumped transactions so far, oldest first."""
        if self.dump_dir is None:
            raise RuntimeError("smtp-sink runs without -d (dump=False) or has stopped")
        files = sorted(self.dump_dir.rglob("m.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [parse_sink_dump(path.read_bytes()) for path in files]

    def wait_for_messages(self, count: int, timeout: float = 10) -> list[SinkDump]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def _address(args: str) -> str:
    # smtp-sink records the argument after "FROM:"/"TO:" ("<a@b.example> SIZE=123"); older ones the whole.
    match = re.match(r"\s*(?:(?:FROM|TO):\s*)?<([^>]*)>", args, re.IGNORECASE)
    return match.group(1) if match else args.strip()


def parse_sink_dump(raw: bytes) -> SinkDump:
    """Split one smtp-sink dump file into envelope and content (see smtp-sink(1), DUMP FILE FORMAT)."""
    mail_from = ""
    rcpts: list[str] = []
    offset = 0
    while offset < len(raw):
        end = raw.find(b"\n", offset)
        end = len(raw) if end < 0 else end + 1
        line = raw[offset:end].decode("utf-8", "replace").rstrip("\n")
        offset = end
        if line.startswith("X-Mail-Args: "):
            mail_from = _address(line.removeprefix("X-Mail-Args: "))
        elif line.startswith("X-Rcpt-Args: "):
            rcpts.append(_address(line.removeprefix("X-Rcpt-Args: ")))
        elif line.startswith("Received: "):
            for _ in range(2):  # the three-line Received: header ends smtp-sink's own headers
                end = raw.find(b"\n", offset)
                offset = len(raw) if end < 0 else end + 1
            break
    # smtp-sink ends each message with an empty line of its own.
    content = raw[offset:].removesuffix(b"\n")
    return SinkDump(mail_from, rcpts, content, raw)


# --- smtp-source and swaks --------------------------------------------------------------------------


def _smtp_source_args(
    host: str,
    port: int,
    *,
    messages: int,
    sessions: int,
    size: int | None,
    message_file: Path | None,
    recipients: int,
    sender: str,
    recipient: str,
    extra: Sequence[str],
) -> list[str]:
    args = [require_tool(SMTP_SOURCE, "postfix"), "-M", "smtp-source.test", "-f", sender, "-t", recipient]
    args += ["-m", str(messages), "-s", str(sessions), "-r", str(recipients)]
    if size is not None:
        args += ["-l", str(size)]
    if message_file is not None:
        args += ["-F", str(message_file)]
    return [*args, *extra, f"{host}:{port}"]


async def run_smtp_source(
    host: str,
    port: int,
    messages: int = 1,
    sessions: int = 1,
    size: int | None = None,
    message_file: Path | None = None,
    recipients: int = 1,
    timeout: float = 60,
    *,
    sender: str = "source@smtp-source.test",
    recipient: str = "sink@smtp-source.test",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run Postfix's smtp-source (load generator) against host:port without blocking the loop, so the
    server may live in this same loop. `extra` adds options (-d reuse connection, -N unique rcpts, -c)."""
    args = _smtp_source_args(
        host,
        port,
        messages=messages,
        sessions=sessions,
        size=size,
        message_file=message_file,
        recipients=recipients,
        sender=sender,
        recipient=recipient,
        extra=extra,
    )
    return await _run_async(args, timeout)


async def swaks(
    *args: str, timeout: float = 60, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run swaks without blocking the loop: `await swaks("--server", f"127.0.0.1:{port}", "--to", rcpt)`.
    swaks normalises line endings; use send_raw_smtp for exact bytes."""
    return await _run_async([require_tool("swaks", "swaks"), *args], timeout, input)


def swaks_sync(
    *args: str, timeout: float = 60, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """swaks for servers outside this process's event loop (smtp-sink, a subprocess relay)."""
    cmd = [require_tool("swaks", "swaks"), *args]
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)


async def _run_async(
    args: list[str], timeout: float, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(input)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# --- raw SMTP ---------------------------------------------------------------------------------------

_FINAL_REPLY = re.compile(rb"^\d{3}(?: |$)")


def _expected_replies(chunk: bytes, in_data: bool) -> tuple[int, bool]:
    """How many final replies a well-behaved server owes for `chunk`: one per command line; none for
    data lines; one for a lone "." line that ends the data. Only a guide for how long to wait: the
    server's real interpretation (the point of smuggling tests) is what gets recorded."""
    expected = 0
    for line in chunk.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue
        if in_data:
            if line == b".\r\n":
                expected += 1
                in_data = False
        else:
            expected += 1
            in_data = line.strip().upper() in (b"DATA", b"BDAT")
    return expected, in_data


async def send_raw_smtp(
    host: str,
    port: int,
    script: Sequence[bytes],
    *,
    timeout: float = 10,
    settle: float = 0.05,
) -> list[bytes]:
    """Send each chunk of `script` exactly as given (no line-ending or dot fixes) and collect the reply
    lines (without CRLF), the greeting first. After each chunk it waits for the replies a well-behaved
    server would owe (up to `timeout`), then `settle` more seconds for any extra ones."""
    reader, writer = await asyncio.open_connection(host, port)
    replies: list[bytes] = []

    async def read_replies(expected: int) -> None:
        finals = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = deadline - loop.time() if finals < expected else settle
            if wait <= 0:
                return
            try:
                line = await asyncio.wait_for(reader.readline(), wait)
            except TimeoutError:
                return
            if not line:
                return
            line = line.rstrip(b"\r\n")
            replies.append(line)
            if _FINAL_REPLY.match(line):
                finals += 1

    try:
        await read_replies(1)
        in_data = False
        for chunk in script:
            writer.write(chunk)
            await writer.drain()
            expected, in_data = _expected_replies(chunk, in_data)
            await read_replies(expected)
            if replies and _FINAL_REPLY.match(replies[-1]):
                in_data = replies[-1].startswith(b"354")
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return replies
