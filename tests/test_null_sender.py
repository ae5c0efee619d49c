"""Bounces (DSNs) have the null sender `<>` (RFC 5321 §4.5.5); behind a content filter they pass through
mailrelay like any mail, and must reach the next hop as `MAIL FROM:<>`."""

from __future__ import annotations

from conftest import SettingsFactory
from support.sinks import RecordingSink, send_raw_smtp

DSN = (
    b"From: MAILER-DAEMON@acme.co.jp\r\nTo: recruit@acme.co.jp\r\nSubject: Undelivered Mail\r\n\r\nbounce\r\n"
)


async def test_null_sender_is_relayed_as_null_sender(start_relay, make_settings: SettingsFactory) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(
            relay.host,
            relay.port,
            [b"EHLO mta.acme.co.jp\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<recruit@acme.co.jp>\r\n",
             b"DATA\r\n", DSN + b".\r\n", b"QUIT\r\n"],
        )  # fmt: skip
    text = b"\n".join(replies).decode()
    assert [m.content for m in sink.messages] == [DSN], text
    assert [m.mail_from for m in sink.messages] in (["<>"], [""])
    assert ("MAIL", "<>") in sink.events or ("MAIL", "") in sink.events
