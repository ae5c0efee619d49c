"""Forwarding to the next hop: one connection per client session, commands mirrored, replies typed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib
import aiosmtplib.protocol as aioprotocol

from mailrelay.config import NextHopSettings
from mailrelay.message import WireReady, crlf_only, starts_a_line_with_dot

UnavailableKind = Literal["connect", "timeout", "disconnect", "tls", "protocol"]
# Where the next hop was lost: the connection's set-up (TCP, greeting and, when used, STARTTLS), or the
# command under way ("DATA": the DATA command, the message or the reply to its final dot).
HopStage = Literal["connect", "EHLO", "MAIL", "RCPT", "DATA", "RSET"]


# Content larger than this is checked for wire-readiness in a thread (see WireReady).
WIRE_CHECK_OFF_LOOP_BYTES = 64 * 1024


def wire_ready(content: bytes) -> bytes:
    """WireReady(content) when content is already wire-ready, else content unchanged."""
    if not content.endswith(b"\r\n") or not crlf_only(content) or starts_a_line_with_dot(content):
        return content
    return WireReady(content)


def _fast_data_path() -> None:
    """aiosmtplib runs two regex passes over every message on the event loop before DATA: line-ending
    normalisation (311 ms for 27 MB, because every CRLF matches and is replaced by itself) and dot-stuffing
    (91 ms). Our content is already CRLF-clean (relay.normalize_line_endings), so both are identities for
    it; give them fast paths with the same results, so a large message does not stall every other session
    (issue 5: event-loop stalls under 100 ms). Messages that do need either change take the original path.
    Even the fast paths' scans cost ~80 ms on the loop for 27 MB, so large content is checked in a thread
    first and arrives as WireReady, which both return at once."""
    original_normalize = aioprotocol.normalize_message_line_endings
    original_period = aioprotocol.PERIOD_REGEX

    def normalize(message: bytes) -> bytes:
        if type(message) is WireReady:
            return message
        if crlf_only(message):
            return message if message.endswith(b"\r\n") else message + b"\r\n"
        return original_normalize(message)

    class Period:
        """PERIOD_REGEX, but a message with no line that starts with "." is returned as it is."""

        @staticmethod
        def sub(replacement: bytes, message: bytes) -> bytes:
            if type(message) is WireReady:
                return message
            if not starts_a_line_with_dot(message):
                return message
            return original_period.sub(replacement, message)

    aioprotocol.normalize_message_line_endings = normalize
    aioprotocol.PERIOD_REGEX = Period()  # type: ignore[assignment]


_fast_data_path()

_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def _printable_line(text: str) -> str:
    """`text` as one printable-ASCII line, safe to put into our own reply or a log line."""
    return _PRINTABLE.sub(" ", " ".join(text.split()))[:400]


@dataclass(frozen=True)
class Reply:
    """A reply of the next hop. `text` is its text without the code (enhanced status included)."""

    code: int
    text: str

    @property
    def kind(self) -> Literal["2xx", "4xx", "5xx"]:
        if 200 <= self.code < 300:
            return "2xx"
        return "4xx" if 400 <= self.code < 500 else "5xx"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def one_line(self) -> str:
        """The text as one printable-ASCII line, safe to put into our own reply or a log line."""
        return _printable_line(self.text)


class NextHopUnavailable(Exception):
    """No reply could be had from the next hop: the sender must retry (never a 5xx, RFC 5321 §4.2.5)."""

    def __init__(self, kind: UnavailableKind, detail: str, stage: HopStage = "connect") -> None:
        self.kind = kind
        self.detail = detail
        self.stage = stage
        super().__init__(f"{kind}: {detail}")

    @property
    def what(self) -> str:
        """What happened where, for logs: "connect: …" when no connection could be made, "disconnect at
        RCPT: …" when the next hop hung up during RCPT. The detail may be the next hop's text (a 421)."""
        where = "" if self.kind == self.stage else f" at {self.stage}"
        return f"{self.kind}{where}: {_printable_line(self.detail)}"


class HopConnection(Protocol):
    """One open connection to the next hop; a refused command returns its Reply, it does not raise."""

    @property
    def alive(self) -> bool: ...

    def supports(self, extension: str) -> bool: ...

    async def mail(self, sender: str, options: list[str]) -> Reply: ...

    async def rcpt(self, recipient: str) -> Reply: ...

    async def data(self, content: bytes) -> Reply: ...

    async def rset(self) -> None: ...

    async def close(self) -> None: ...


class NextHop(Protocol):
    async def connect(self) -> HopConnection: ...


class SmtpNextHop:
    """The next hop over SMTP with aiosmtplib (which dot-stuffs and normalises line endings on the wire)."""

    def __init__(self, settings: NextHopSettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = helo_name
        # Built once: loading the system CA bundle costs ~20 ms of CPU, far more than relaying a message
        # (issue 8 profile), and a content filter may open a connection per message.
        self.tls_context: ssl.SSLContext | None = None
        if settings.starttls != "off":
            self.tls_context = ssl.create_default_context()
            # "opportunistic" is Postfix's `may`: encrypt when offered, certificate not checked (against
            # passive eavesdropping only; failing on a self-signed certificate would hold up all mail).
            # "required" is `verify`/`secure`: TLS or a 4xx, with the certificate checked.
            if settings.starttls == "opportunistic" or not settings.verify_certificate:
                self.tls_context.check_hostname = False
                self.tls_context.verify_mode = ssl.CERT_NONE

    async def connect(self) -> HopConnection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            local_hostname=self.helo_name,
            # start_tls: None means "when offered" (aiosmtplib's opportunistic mode), True means required:
            # a next hop that does not offer STARTTLS is then an error, never a plaintext fallback.
            start_tls={"off": False, "opportunistic": None, "required": True}[s.starttls],
            tls_context=self.tls_context,
            validate_certs=s.starttls == "required" and s.verify_certificate,
        )
        stage: HopStage = "connect"
        try:
            await client.connect()
            stage = "EHLO"
            await client.ehlo()
        except BaseException as exc:
            client.close()
            raise _unavailable(exc, stage) from exc
        if s.starttls == "required" and client.get_transport_info("ssl_object") is None:
            client.close()
            raise NextHopUnavailable("tls", "STARTTLS required but not in use")
        return _SmtpConnection(client)


def _unavailable(exc: BaseException, stage: HopStage) -> BaseException:
    if isinstance(exc, asyncio.CancelledError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return NextHopUnavailable("timeout", str(exc), stage)
    # Before ConnectionError and OSError, which SMTPServerDisconnected and ssl.SSLError are too: a next hop
    # that hung up after the connection was made, or a failed TLS handshake, was logged as a connect failure.
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return NextHopUnavailable("disconnect", str(exc), stage)
    if isinstance(exc, ssl.SSLError):
        return NextHopUnavailable("tls", str(exc), stage)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        # A connection reset or a broken pipe once the connection is up is a hang-up too.
        return NextHopUnavailable("connect" if stage == "connect" else "disconnect", str(exc), stage)
    if isinstance(exc, aiosmtplib.SMTPException) and "tls" in str(exc).lower():
        return NextHopUnavailable("tls", str(exc), stage)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 421:
        return NextHopUnavailable("disconnect", f"421 {exc.message}", stage)
    return NextHopUnavailable("protocol", f"{type(exc).__name__}: {exc}", stage)


class _SmtpConnection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client

    @property
    def alive(self) -> bool:
        return self.client.is_connected

    def supports(self, extension: str) -> bool:
        return self.client.supports_extension(extension)

    async def _command(self, stage: HopStage, *args: bytes) -> Reply:
        try:
            response = await self.client.execute_command(stage.encode(), *args)
        except BaseException as exc:
            self.client.close()
            raise _unavailable(exc, stage) from exc
        if response.code == 421:
            # RFC 5321 §3.8: 421 means the next hop is closing the channel; the transaction cannot go on.
            self.client.close()
            raise NextHopUnavailable("disconnect", f"421 {response.message}", stage)
        return Reply(response.code, response.message)

    async def mail(self, sender: str, options: list[str]) -> Reply:
        # Addresses were validated by the SMTP layer; they go out exactly as received (no parseaddr rewrite).
        return await self._command(
            "MAIL", b"FROM:<" + sender.encode("utf-8") + b">", *(o.encode() for o in options)
        )

    async def rcpt(self, recipient: str) -> Reply:
        return await self._command("RCPT", b"TO:<" + recipient.encode("utf-8") + b">")

    async def data(self, content: bytes) -> Reply:
        try:
            # Inside the try: a transaction timeout may cancel us during the check, and then the client must
            # be closed like after any other failure, or it stays open with the next hop's transaction.
            if len(content) > WIRE_CHECK_OFF_LOOP_BYTES and type(content) is not WireReady:
                content = await asyncio.to_thread(wire_ready, content)
            if self.client.protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Server not connected")
            response = await self.client.protocol.execute_data_command(content, timeout=self.client.timeout)
        except aiosmtplib.SMTPDataError as exc:
            return Reply(exc.code, exc.message)
        except BaseException as exc:
            self.client.close()
            raise _unavailable(exc, "DATA") from exc
        return Reply(response.code, response.message)

    async def rset(self) -> None:
        try:
            response = await self.client.execute_command(b"RSET")
        except BaseException as exc:
            self.client.close()
            raise _unavailable(exc, "RSET") from exc
        if response.code != 250:
            self.client.close()
            raise NextHopUnavailable("protocol", f"RSET answered {response.code}", "RSET")

    async def close(self) -> None:
        if self.client.is_connected:
            try:
                await asyncio.wait_for(self.client.quit(), timeout=5)
            except BaseException:
                self.client.close()


class DirectoryNextHop:
    """For first tries: each delivered message becomes NAME.eml (exact bytes) plus NAME.json (envelope)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def connect(self) -> HopConnection:
        self.directory.mkdir(parents=True, exist_ok=True)
        return _DirectoryConnection(self.directory)


class _DirectoryConnection:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sender: str | None = None
        self.recipients: list[str] = []

    @property
    def alive(self) -> bool:
        return True

    def supports(self, extension: str) -> bool:
        return extension.lower() in {"8bitmime", "smtputf8", "size"}

    async def mail(self, sender: str, options: list[str]) -> Reply:
        self.sender, self.recipients = sender, []
        return Reply(250, "2.1.0 Ok")

    async def rcpt(self, recipient: str) -> Reply:
        self.recipients.append(recipient)
        return Reply(250, "2.1.5 Ok")

    async def data(self, content: bytes) -> Reply:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        envelope = {"mail_from": self.sender, "rcpt_tos": self.recipients}
        await asyncio.to_thread(self._write, name, content, envelope)
        self.sender, self.recipients = None, []
        return Reply(250, f"2.0.0 Ok: stored as {name}.eml")

    def _write(self, name: str, content: bytes, envelope: Mapping[str, object]) -> None:
        # Written, fsynced, then renamed: a crash never leaves a half message under its final name.
        for suffix, payload in ((".json", json.dumps(envelope).encode()), (".eml", content)):
            tmp = self.directory / f".{name}{suffix}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.directory / f"{name}{suffix}")
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def rset(self) -> None:
        self.sender, self.recipients = None, []

    async def close(self) -> None:
        return None
