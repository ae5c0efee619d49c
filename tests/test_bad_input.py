"""Issue 5, bad input: every hostile or broken input gets a deliberate answer (docs/RELIABILITY.md), never a
crash, never a 250 followed by truncation, never a bare CR or LF toward the next hop."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from conftest import SettingsFactory
from mailrelay.config import load_settings
from support.sinks import RecordingSink, send_raw_smtp

E2E = Path(__file__).resolve().parent / "e2e"
HEAD = b"From: recruit@acme.co.jp\r\nTo: applicant@gmail.example\r\nSubject: test\r\n\r\n"
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def session(*commands: bytes) -> list[bytes]:
    return [b"EHLO client.test\r\n", *commands, b"QUIT\r\n"]


def replies_text(replies: list[bytes]) -> str:
    return b"\n".join(replies).decode("utf-8", "replace")


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n"]


@pytest.mark.parametrize("end", SMUGGLING, ids=[repr(e) for e in SMUGGLING])
async def test_smuggled_end_of_data_variants_never_make_a_second_message(
    start_relay, make_settings: SettingsFactory, end: bytes
) -> None:
    smuggled = (
        b"MAIL FROM:<ceo@acme.co.jp>\r\nRCPT TO:<victim@gmail.example>\r\nDATA\r\n"
        b"From: ceo@acme.co.jp\r\nSubject: SMUGGLED\r\n\r\nwire money\r\n"
    )
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(
            relay.host,
            relay.port,
            session(
                b"MAIL FROM:<recruit@acme.co.jp>\r\n",
                b"RCPT TO:<applicant@gmail.example>\r\n",
                b"DATA\r\n",
                HEAD + b"outer body" + end + smuggled + b".\r\n",
            ),
        )
    assert len(sink.messages) == 1, replies_text(replies)
    delivered = sink.messages[0]
    assert delivered.mail_from == "recruit@acme.co.jp" and delivered.rcpt_tos == ["applicant@gmail.example"]
    assert not BARE.search(delivered.content), "a bare CR or LF reached the next hop"
    assert [e for e in sink.events if e[0] == "MAIL"] == [("MAIL", "recruit@acme.co.jp")]


async def test_bare_lf_command_endings_still_give_exactly_one_clean_message(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await send_raw_smtp(
            relay.host,
            relay.port,
            [
                b"EHLO client.test\n",
                b"MAIL FROM:<recruit@acme.co.jp>\n",
                b"RCPT TO:<applicant@gmail.example>\n",
                b"DATA\n",
                b"Subject: lf\n\nline1\nline2\r\n.\r\n",
                b"QUIT\n",
            ],
        )
    assert len(sink.messages) == 1
    assert sink.messages[0].content == b"Subject: lf\r\n\r\nline1\r\nline2\r\n"


async def test_nul_bytes_pass_through(start_relay, make_settings: SettingsFactory) -> None:
    body = HEAD + b"a\x00b\r\n"
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await send_raw_smtp(
            relay.host, relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<x@gmail.example>\r\n", b"DATA\r\n",
                    body + b".\r\n"),
        )  # fmt: skip
    assert [m.content for m in sink.messages] == [body]


@pytest.mark.parametrize(
    ("length", "accepted"), [(998, True), (999, True), (1000, False), (1001, False), (5000, False)]
)
async def test_line_length_limits(
    start_relay, make_settings: SettingsFactory, length: int, accepted: bool
) -> None:
    """RFC 5321 §4.5.3.1.6: 998 octets + CRLF (+1 for a transparency dot). Longer lines are refused after the
    data (5xx: the message is malformed, a retry would not help), never accepted and truncated."""
    body = HEAD + b"x" * length + b"\r\n"
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(
            relay.host, relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<x@gmail.example>\r\n", b"DATA\r\n",
                    body + b".\r\n", b"NOOP\r\n"),
        )  # fmt: skip
    text = replies_text(replies)
    if accepted:
        assert [m.content for m in sink.messages] == [body]
    else:
        assert sink.messages == [] and "500 Line too long" in text
    assert "250 OK" in text.split("354", 1)[1]  # the session goes on (NOOP answered)


async def test_one_megabyte_header_line_is_refused_not_truncated(
    start_relay, make_settings: SettingsFactory
) -> None:
    body = b"X-Junk: " + b"a" * 1_000_000 + b"\r\n" + HEAD
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(
            relay.host, relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<x@gmail.example>\r\n", b"DATA\r\n",
                    body + b".\r\n"),
        )  # fmt: skip
    assert sink.messages == [] and "500 Line too long" in replies_text(replies)


async def test_size_over_the_limit_552_at_mail_and_after_the_dot(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        limit = relay.components.settings.smtp.max_message_size
        replies = await send_raw_smtp(
            relay.host, relay.port,
            session(f"MAIL FROM:<recruit@acme.co.jp> SIZE={limit + 1}\r\n".encode()),
        )  # fmt: skip
        assert "552" in replies_text(replies)
        big = HEAD + (b"y" * 900 + b"\r\n") * (limit // 900 + 10)
        replies = await send_raw_smtp(
            relay.host, relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<x@gmail.example>\r\n", b"DATA\r\n",
                    big + b".\r\n"),
        )  # fmt: skip
    assert "552" in replies_text(replies).split("354", 1)[1]
    assert sink.messages == []


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        (HEAD + (b"y" * 98 + b"\r\n") * 101, "552 Error: Too much mail data"),
        (HEAD + b"x" * 1000 + b"\r\n", "500 Line too long"),
    ],
    ids=["too much", "line too long"],
)
async def test_data_refused_after_the_dot_is_logged_and_counted(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, body: bytes, reply: str
) -> None:
    """Bad input gets its reply, a log line under the transaction id and a count, like every refusal the
    handler words. Found by review: data refused by the reader (over max_message_size, a line too long)
    reached neither: the sender bounced the message, and the relay's log and metrics showed nothing."""
    caplog.set_level(logging.INFO, logger="mailrelay")
    async with RecordingSink() as sink:
        source = make_settings(sink.port).source
        text = source.read_text(encoding="utf-8").replace("[smtp]\n", "[smtp]\nmax_message_size = 10000\n", 1)
        source.write_text(text, encoding="utf-8")
        relay = await start_relay(load_settings(source))
        replies = await send_raw_smtp(
            relay.host, relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<x@gmail.example>\r\n", b"DATA\r\n",
                    body + b".\r\n"),
        )  # fmt: skip
    assert reply in replies_text(replies).split("354", 1)[1]
    assert sink.messages == []
    logged = rf"[0-9A-F]{{10}}: client=\[127\.0\.0\.1\] data refused: {re.escape(reply)}"
    assert re.search(logged, caplog.text), caplog.text
    registry = relay.components.metrics.registry
    assert registry.get_sample_value("mailrelay_smtp_replies_total", {"command": "DATA", "class": "5xx"}) == 1


async def test_ten_thousand_recipients_get_452_past_the_limit(
    start_relay, make_settings: SettingsFactory
) -> None:
    rcpts = [f"RCPT TO:<r{i}@gmail.example>\r\n".encode() for i in range(10_000)]
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port, max_recipients=1000))
        replies = await send_raw_smtp(
            relay.host,
            relay.port,
            session(b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"".join(rcpts), b"RSET\r\n"),
        )
    text = replies_text(replies)
    assert text.count("452 4.5.3 Too many recipients") == 9000
    assert len([e for e in sink.events if e[0] == "RCPT"]) == 1000


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (b"MAIL FROM:<a\rb@acme.co.jp>\r\n", "501"),  # never silently rewritten to ab@acme.co.jp
        (b"RCPT TO:<a\x01b@gmail.example>\r\n", "501 5.1.3"),
        # Not UTF-8 (RFC 6531 §3.3): a 501, not a 451 that the sender would retry forever (found by review).
        (b"RCPT TO:<a\xffb@gmail.example>\r\n", "501 5.1.3"),
        (b"MAIL FROM:<a\xffb@acme.co.jp>\r\n", "501 5.1.7"),
        (b"RCPT TO:<\xe5\xb1\xb1\xe7\x94\xb0@gmail.example>\r\n", "553 5.6.7"),  # needs SMTPUTF8 downstream
        # Paths the email parser fails on with IndexError or AttributeError: an internal 451 that fired the
        # internal-errors alert and that the sender would retry forever (found by review). Malformed: 553.
        (b"MAIL FROM:<\r\n", "553 5.1.3"),
        (b'MAIL FROM:"\r\n', "553 5.1.3"),
        (b"RCPT TO:<\r\n", "553 5.1.3"),
        (b"RCPT TO:<a@[>\r\n", "553 5.1.3"),
        (b"VRFY <\r\n", "502 Could not VRFY"),
    ],
)
async def test_odd_addresses_get_a_deliberate_answer(
    start_relay, make_settings: SettingsFactory, command: bytes, expected: str
) -> None:
    async with RecordingSink(smtputf8=False) as sink:
        relay = await start_relay(make_settings(sink.port))
        mail = (
            b"MAIL FROM:<recruit@acme.co.jp> SMTPUTF8\r\n"
            if b"\xe5" in command
            else b"MAIL FROM:<recruit@acme.co.jp>\r\n"
        )
        commands = [command] if command.startswith(b"MAIL") else [mail, command]
        replies = await send_raw_smtp(relay.host, relay.port, session(*commands))
    text = replies_text(replies)
    assert expected in text, text
    assert not [e for e in sink.events if e[0] == "RCPT"]
    assert relay.components.metrics.registry.get_sample_value("mailrelay_internal_errors_total") == 0


@pytest.mark.parametrize("size", ["²", "١٢"], ids=["superscript two", "Arabic-Indic twelve"])
async def test_a_size_that_is_not_ascii_digits_is_a_syntax_error(
    start_relay, make_settings: SettingsFactory, size: str
) -> None:
    """RFC 1870 §3: a SIZE value is ASCII digits. aiosmtpd checks it with str.isdigit(): "²" passed and then
    failed int(), an internal 451 (and the internal-errors alert) that the sender would retry forever;
    "١٢" was read as 12 and sent on to the next hop. Found by review."""
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(
            relay.host, relay.port, session(f"MAIL FROM:<recruit@acme.co.jp> SIZE={size}\r\n".encode())
        )
    assert "501 Syntax" in replies_text(replies), replies_text(replies)
    assert sink.events == []
    assert relay.components.metrics.registry.get_sample_value("mailrelay_internal_errors_total") == 0


async def test_a_source_route_is_ignored_as_rfc_5321_appendix_c_says(
    start_relay, make_settings: SettingsFactory
) -> None:
    """The route is dropped and the final address is relayed under the same relay policy; the next hop never
    sees the route."""
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await send_raw_smtp(
            relay.host, relay.port,
            session(
                b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<@relay.example:victim@gmail.example>\r\n"
            ),
        )  # fmt: skip
    assert [e for e in sink.events if e[0] == "RCPT"] == [("RCPT", "victim@gmail.example")]
