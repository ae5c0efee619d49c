"""Byte-level MIME: bounded scanning, text extraction for detection, and footer splicing that keeps every
byte we do not mean to change.

INTERFACE STUB: the relay is written against these names; the implementation replaces the bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps checked by a cheap pre-scan before any full parse (issue 3, "Bounded")."""

    max_parts: int = 1000
    max_depth: int = 50
    max_header_bytes: int = 100 * 1024  # one header block, like Postfix header_size_limit


class MimeError(Exception):
    """The message cannot be decorated; `reason` is a short metric-safe word (closed set)."""

    reason: str = "malformed"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LimitExceeded(MimeError):
    """Over a pre-scan cap: reason is one of "parts", "depth", "header_size"."""


class NotDecoratable(MimeError):
    """Decoration refused: reason is one of "signed", "encrypted", "no_body_part", "charset",
    "encoding", "malformed"."""


@dataclass(frozen=True)
class Footer:
    """A footer already rendered for one recipient: `text` is plain text, `html` is HTML markup (escaped)."""

    text: str
    html: str


@dataclass(frozen=True)
class MessageText:
    """What detection reads: decoded text, in str."""

    subject: str  # RFC 2047 decoded, unfolded
    plain: str  # the main text/plain body, decoded in its charset ("" if none)
    html: str  # the main text/html body source, decoded in its charset ("" if none)


class ParsedMessage:
    """One received message, scanned once. Decoration never mutates it: each call returns new bytes."""

    raw: bytes

    def header_values(self, name: str) -> list[str]:
        """Top-level header values (unfolded, RFC 2047 decoded), in order of appearance."""
        raise NotImplementedError

    @property
    def protected(self) -> str | None:
        """"signed" or "encrypted" if any part is multipart/signed, multipart/encrypted or
        application/pkcs7-mime (at any depth), else None."""
        raise NotImplementedError

    def text(self) -> MessageText:
        raise NotImplementedError

    def decorate(self, footer: Footer) -> bytes:
        """The whole message with `footer` in the main text/plain and text/html parts; raises NotDecoratable."""
        raise NotImplementedError


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMessage:
    """Scan `raw`; raises LimitExceeded or MimeError. Never raises anything else for bad input."""
    raise NotImplementedError


def prepend_headers(raw: bytes, lines: list[bytes]) -> bytes:
    """`lines` (each a complete header line ending in CRLF) before the first original header line."""
    return b"".join(lines) + raw


def remove_header_fields(raw: bytes, drop: Callable[[bytes, bytes], bool]) -> bytes:
    """Remove top-level header fields (with their folded continuation lines) for which
    drop(lowercased_name, raw_value_bytes) is true; every other byte unchanged."""
    raise NotImplementedError
