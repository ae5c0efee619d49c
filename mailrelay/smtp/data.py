"""Reading the DATA phase into one buffer, dot-unstuffed as the lines arrive (RFC 5321 §4.5.2)."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
from dataclasses import dataclass

from aiosmtpd.smtp import MISSING, SMTP

from mailrelay.message import WireReady

log = logging.getLogger("mailrelay.smtp")

END_OF_DATA = b".\r\n"
# aiosmtpd 1.4.6's replies to data refused after the final dot (RFC 5321 §4.2.5), quoted by the docs.
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"
_STUFFED_LINE = re.compile(rb"\r\n\.")  # a line after the first that starts with a dot
# readuntil returns without yielding while the stream's buffer holds what it looks for, and one read from the
# socket can bring 256 KiB: thousands of short pieces. Let other sessions run every so many.
PIECES_PER_TURN = 1024


class DataState(enum.Enum):
    """How the DATA phase ended; anything but COMPLETE means the content was discarded while reading."""

    COMPLETE = "complete"
    LINE_TOO_LONG = "line too long"
    TOO_MUCH = "too much"


@dataclass(frozen=True, slots=True)
class DataRead:
    state: DataState
    content: bytes  # dot-unstuffed, without the terminating ".\r\n"; empty unless COMPLETE


class _DataReader:
    """The DATA phase's state between pieces of input. `partial` is the line not yet ended by CRLF, from
    its start; once the content is discarded it is only the last two bytes read, enough to see CRLF before
    a dot."""

    def __init__(self, size_limit: int | None, line_limit: int, stream_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.stream_limit = stream_limit
        self.content = bytearray()
        self.received = 0
        self.state = DataState.COMPLETE
        self.partial = b""
        # What the next hop's client would otherwise scan the whole message for again (WireReady).
        self.bare_cr_or_lf = False
        self.dot_lines = False

    def fail(self, state: DataState) -> None:
        if self.state is DataState.COMPLETE:
            self.state = state
            self.content = bytearray()

    def take(self, piece: bytes) -> bool:
        """Add one piece of input; True when it ends with the final dot (which is not content)."""
        data = self.partial + piece
        final = data == END_OF_DATA or data.endswith(b"\r\n" + END_OF_DATA)
        if final:
            data = data[: -len(END_OF_DATA)]
        if self.state is not DataState.COMPLETE:
            self.partial = data[-2:]
            return final
        last = data.rfind(b"\r\n")
        if last >= 0:
            self._lines(data[: last + 2])
        self.partial = data[last + 2 :] if last >= 0 else data
        if len(self.partial) > self.stream_limit + 1:
            # No CRLF within the stream's limit: aiosmtpd's readuntil gives up on such a line at once,
            # without counting its size (LimitOverrunError).
            self.fail(DataState.LINE_TOO_LONG)
            self.partial = self.partial[-2:]
        return final

    def _lines(self, lines: bytes) -> None:
        """Whole lines, each ending in CRLF, the first at a line start."""
        # The split's last piece is the empty one after the final CRLF. max(map(len)) builds no list of
        # lengths: ~12 µs of a 20 KB message's ~50 (issue 8 profile).
        pieces = lines.split(b"\r\n")
        longest = max(map(len, pieces))
        if longest <= self.stream_limit and longest + 2 <= self.line_limit:
            # RFC 5321 §4.5.2: a line's leading dot is a transparency dot. Searched for first: most mail
            # has none, and the search costs half of replace's own search (issue 8 profile).
            unstuffed = lines.replace(b"\r\n.", b"\r\n") if _STUFFED_LINE.search(lines) else lines
            if lines[:1] == b".":
                unstuffed = unstuffed[1:]
            # RFC 1870 §5: a message's size does not count transparency dots. aiosmtpd counts them, and a
            # message of the size it had accepted at MAIL SIZE= got 552 (§6.3: only if larger than declared).
            total = self.received + len(unstuffed)
            if not self.size_limit or total <= self.size_limit:
                self.received = total
                count = len(pieces) - 1
                if lines.count(b"\r") != count or lines.count(b"\n") != count:
                    self.bare_cr_or_lf = True  # a CR or LF that is not part of a line's CRLF
                if len(unstuffed) != len(lines):
                    self.dot_lines = True
                self.content += unstuffed
                return
        # Some line ends the content: find which, line by line, in the order aiosmtpd would.
        start = 0
        for length in map(len, pieces[:-1]):
            line = lines[start : start + length + 2]
            start += length + 2
            if length > self.stream_limit:
                self.fail(DataState.LINE_TOO_LONG)
                return
            dot = line[:1] == b"."
            self.received += length + 2 - dot
            if self.size_limit and self.received > self.size_limit:
                self.fail(DataState.TOO_MUCH)
                return
            if length + 2 > self.line_limit:
                self.fail(DataState.LINE_TOO_LONG)
                return
            self.content += line[1:] if dot else line


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int, stream_limit: int
) -> DataRead:
    """Read up to the line ".\\r\\n", with aiosmtpd 1.4.6's limits and answers; but the size is counted as
    RFC 1870 §5 defines it, without transparency dots.

    aiosmtpd reads the data a line at a time and keeps every line as its own bytearray, then unstuffs and
    joins them after the final dot: for a 27 MB message that is ~270,000 objects walked, joined and freed in
    one go, 100-150 ms during which the event loop serves nobody else (issue 5, scripts/reliability
    "stall"), and even a 50 KB message costs ~650 awaits (a fifth of the event loop's time per relayed
    50 KB message, issue 8 profile). Here the stream is read up to each ".\\r\\n" (or as much as its limit
    lets through), and whole lines are checked, unstuffed and appended in C, so the end costs one copy.

    Like aiosmtpd, only CRLF ends a line (so a bare LF before "." never ends the data: the SMTP smuggling
    variants stay content, CVE-2023-51764); an over-long line or too much data is read to the end and
    discarded, and reported only after the final dot (RFC 5321 §4.2.5). Nothing after the final dot is
    read: a pipelined next command stays in the stream.
    """
    state = _DataReader(size_limit, line_limit, stream_limit)
    pieces = 0
    while True:
        pieces += 1
        if pieces % PIECES_PER_TURN == 0:
            await asyncio.sleep(0)
        try:
            piece = await reader.readuntil(END_OF_DATA)
        except asyncio.LimitOverrunError as overrun:
            # More than the stream's limit before the next ".\r\n" (or none yet): take what was searched.
            # It holds no ".\r\n", and what may begin one stays in the stream.
            state.take(await reader.read(overrun.consumed))
            continue
        if state.take(piece):
            break
    if state.state is not DataState.COMPLETE:
        return DataRead(state.state, b"")
    if state.content and not state.bare_cr_or_lf and not state.dot_lines:
        # Every line ends in CRLF (so does the last) and none starts with a dot: as the wire needs it.
        return DataRead(state.state, WireReady(state.content))
    return DataRead(state.state, bytes(state.content))


class OneBufferDataSMTP(SMTP):
    """aiosmtpd's SMTP reading DATA with read_data; for handlers with handle_DATA and decode_data off."""

    _last_heard = -math.inf  # the loop's time when the client's last bytes arrived
    _reading_data = False

    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        # smtp.timeout is how long a client may stay silent (RFC 5321 §4.5.3.2.7; Postfix's smtpd_timeout
        # is per read). aiosmtpd restarts its timer at each command only: a message that took longer than
        # that to arrive, however steadily, was cut off, and the retry with it. During DATA the timer is
        # moved on, when it fires, by the time since the client's last bytes.
        if self._reading_data:
            idle = self.loop.time() - self._last_heard
            if idle < self._timeout_duration:
                self._reset_timeout(self._timeout_duration - idle)
                return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's smtp_DATA with its data loop replaced by read_data: same replies, same order."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._reading_data = True
        try:
            data = await read_data(
                self._reader,
                size_limit=self.data_size_limit,
                line_limit=self.line_length_limit,
                stream_limit=self.line_length_limit,  # aiosmtpd's StreamReader limit
            )
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        finally:
            self._reading_data = False
        if data.state is not DataState.COMPLETE:
            reply = LINE_TOO_LONG if data.state is DataState.LINE_TOO_LONG else TOO_MUCH
            self.data_refused(reply)
            await self.push(reply)
            self._end_transaction()
            return
        self.envelope.content = data.content
        self.envelope.original_content = data.content
        # Nor is the client idle while it waits for our reply (forwarding takes up to transaction_timeout):
        # its idle timer ran on, and past it the connection closed under a transaction about to answer.
        assert self._timeout_handle is not None
        self._timeout_handle.cancel()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if self.transport is not None:  # else the connection is gone, its timer with it
                self._reset_timeout()
        self._end_transaction()
        await self.push("250 OK" if status is MISSING else status)

    def data_refused(self, reply: str) -> None:
        """Called with the reply to data refused before the handler saw it, for the log and the metrics."""

    def _end_transaction(self) -> None:
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd: new Envelope, clears state
