"""The chunked body and header-only split mailrelay.signing uses for large messages return exactly what
dkimpy's own functions return, for any bytes (tests/test_signing.py: the whole signature)."""

from __future__ import annotations

from dkim import canonicalization
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrelay import signing

PIECES = [b"\r\n", b"\r", b"\n", b" ", b"\t", b"  \t ", b"x", b"yz", b":", b"A: b", b"\r\n\r\n", b" \r\n"]


def dkimpy_relaxed(body: bytes) -> bytes:
    canon = canonicalization
    return canon.correct_empty_body(
        canon.strip_trailing_lines(canon.compress_whitespace(canon.strip_trailing_whitespace(body)))
    )


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.integers(min_value=1, max_value=12))
def test_chunked_relaxed_body_is_dkimpys(pieces: list[bytes], chunk_bytes: int) -> None:
    body = b"".join(pieces)
    assert signing.relaxed_body(body, chunk_bytes) == dkimpy_relaxed(body)


def outcome(parse: object, message: bytes) -> object:
    try:
        return parse(message)  # type: ignore[operator]
    except Exception as exc:
        return type(exc), str(exc)


HEADER_PIECES = [
    b"From: a@b\r\n",
    b"Subject: x\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"body",
    b"\r",
    b"bad line\r\n",
]


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(HEADER_PIECES), max_size=20))
def test_split_message_is_dkimpys_rfc822_parse(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert outcome(signing.split_message, message) == outcome(signing._dkimpy_rfc822_parse, message)
