"""The fast paths given to aiosmtplib's DATA preparation (mailrelay.transport._fast_data_path) return
exactly what its own regexes return, for any bytes; content they skip (WireReady, kept so by
message.splice) is what they would have sent unchanged."""

from __future__ import annotations

import re

from aiosmtplib import protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrelay.message import WireReady, crlf_only, splice, starts_a_line_with_dot
from mailrelay.transport import wire_ready  # importing installs the fast paths

LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
PERIOD = re.compile(rb"(?m)^\.")


def reference(message: bytes) -> bytes:
    normalized = LINE_ENDINGS.sub(b"\r\n", message)
    if not normalized.endswith(b"\r\n"):
        normalized += b"\r\n"
    return PERIOD.sub(b"..", normalized)


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b" ", b"\x00"]), max_size=40))
def test_fast_paths_match_aiosmtplib_for_any_message(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    fast = protocol.PERIOD_REGEX.sub(b"..", protocol.normalize_message_line_endings(message))
    assert fast == reference(message)


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b" ", b"\x00"]), max_size=40))
def test_wire_ready_content_is_sent_exactly_as_aiosmtplib_would_send_it(pieces: list[bytes]) -> None:
    """Large content is checked in a thread and marked WireReady; aiosmtplib's steps then skip it."""
    message = b"".join(pieces)
    checked = wire_ready(message)
    if type(checked) is WireReady:
        assert reference(message) == message
    sent = protocol.PERIOD_REGEX.sub(b"..", protocol.normalize_message_line_endings(checked))
    assert sent == reference(message)


LINE_PIECES = [b"\r", b"\n", b"\r\n", b".", b"a", b"\n.", b"\r.", b"\r\r\n\n"]


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(LINE_PIECES), max_size=40))
def test_line_checks_say_exactly_what_their_definitions_say(pieces: list[bytes]) -> None:
    """The regex-based checks every decorated copy goes through (issue 8: a third of the time of counting
    b"\\r\\n") against their plain definitions."""
    content = b"".join(pieces)
    assert crlf_only(content) == (content.count(b"\r\n") == content.count(b"\r") == content.count(b"\n"))
    assert starts_a_line_with_dot(content) == (PERIOD.search(content) is not None)


Spliced = tuple[bytes, list[tuple[int, int, bytes]]]


@st.composite
def spliced(draw: st.DrawFn, new_pieces: list[bytes]) -> Spliced:
    """Wire-ready content and edits to it: in order, not overlapping, at any offsets."""
    lines = draw(st.lists(st.sampled_from([b"a", b" ", b"a.", b"", b"\x00"]), min_size=1, max_size=8))
    raw = b"".join(line + b"\r\n" for line in lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    edits: list[tuple[int, int, bytes]] = []
    for start, end in zip(cuts[::2], cuts[1::2], strict=False):
        edits.append((start, end, b"".join(draw(st.lists(st.sampled_from(new_pieces), max_size=4)))))
    return raw, edits


@settings(max_examples=1000)
@given(spliced(LINE_PIECES))
def test_a_splice_of_wire_ready_content_is_marked_only_if_it_still_is(case: Spliced) -> None:
    raw, edits = case
    assert type(wire_ready(raw)) is WireReady
    out = splice(WireReady(raw), edits)
    expected, pos = b"", 0
    for start, end, data in edits:
        expected += raw[pos:start] + data
        pos = end
    assert out == expected + raw[pos:]
    if type(out) is WireReady:
        assert reference(out) == out
    assert type(splice(raw, edits)) is bytes  # plain bytes in, plain bytes out


@settings(max_examples=1000)
@given(spliced([b"\r\n", b"a", b"a\r\n", b" .", b"\r\n\r\n"]))
def test_a_splice_of_clean_pieces_is_marked_exactly_when_it_is_wire_ready(case: Spliced) -> None:
    """New pieces that are clean themselves (footers, header lines, base64 lines): then only the junctions
    decide, and splice tells exactly what a scan of the whole would."""
    raw, edits = case
    out = splice(WireReady(raw), edits)
    assert (type(out) is WireReady) == (type(wire_ready(bytes(out))) is WireReady)
