"""The fast paths given to aiosmtplib's DATA preparation (mailrelay.transport._fast_data_path) return
exactly what its own regexes return, for any bytes."""

from __future__ import annotations

import re

from aiosmtplib import protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrelay.transport import WireReady, wire_ready  # importing installs the fast paths

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
