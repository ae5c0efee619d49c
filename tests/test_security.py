"""Issue 5, security: nothing a client or a config sends can inject a header or markup, an unusable DKIM key
never stops mail, and applicant addresses never reach the logs in clear."""

from __future__ import annotations

import dataclasses
import html
import logging
from email.utils import getaddresses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SettingsFactory
from mailrelay.relay import _SIMPLE_MAILBOX, first_address
from mailrelay.signing import LoadedKey
from support.sinks import RecordingSink, send_raw_smtp

E2E = Path(__file__).resolve().parent / "e2e"
REJECTION = (E2E / "rejection_ja_utf8_alternative.eml").read_bytes()
OFFER = (E2E / "offer_ja.eml").read_bytes()


def header_names(raw: bytes) -> list[bytes]:
    block = raw.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].lower() for line in block.split(b"\r\n") if line and line[:1] not in b" \t"
    ]


async def test_cr_in_helo_never_becomes_a_header_downstream(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await send_raw_smtp(
            relay.host,
            relay.port,
            [
                b"EHLO evil.example\rX-Injected: yes\r\n",
                b"MAIL FROM:<recruit@acme.co.jp>\r\n",
                b"RCPT TO:<applicant@gmail.example>\r\n",
                b"DATA\r\n",
                REJECTION + b".\r\n",
                b"QUIT\r\n",
            ],
        )
    [delivered] = sink.messages
    assert b"X-Injected" not in delivered.content
    # The next hop sees the original header fields plus exactly the ones we add.
    added = [b"dkim-signature", b"x-mailrelay-decorated"]
    assert header_names(delivered.content) == added + header_names(REJECTION)


async def test_text_templated_into_html_is_escaped(start_relay, make_settings: SettingsFactory) -> None:
    evil = '"><a href="https://evil.example">x</a><script>alert(1)</script>'
    settings = make_settings()
    tenant = dataclasses.replace(settings.tenants[0], name=evil)
    async with RecordingSink() as sink:
        settings = dataclasses.replace(make_settings(sink.port), tenants=(tenant,))
        relay = await start_relay(settings)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
    import email
    import email.policy

    message = email.message_from_bytes(sink.messages[0].content, policy=email.policy.default)
    html_part = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html_part and 'href="https://evil.example"' not in html_part
    assert html.escape(evil) in html_part
    assert 'href="https://careerrelay.jp/r/' in html_part  # our link: https, on the configured host


async def test_an_unusable_dkim_key_forwards_the_original_and_counts_it(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Documented policy (docs/how-it-works.md): mail first. A copy that cannot be signed is not sent
    decorated; the original goes through, `mailrelay_dkim_signatures_total{result="error"}` and
    `mailrelay_messages_failed_open_total{stage="sign"}` count it, and no key material is logged."""
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        # The key went bad after start (a truncated file reloaded, a bug): signing raises at once.
        broken = LoadedKey(
            selector="mr1", algorithm="rsa-sha256", private=b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n"
        )
        relay.components.signer.keys["acme"] = (broken,)
        refused, reply = await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
    assert refused == {} and reply.startswith("2")
    assert [m.content for m in sink.messages] == [REJECTION]
    registry = relay.components.metrics.registry
    assert registry.get_sample_value("mailrelay_messages_failed_open_total", {"stage": "sign"}) == 1
    assert (
        registry.get_sample_value(
            "mailrelay_dkim_signatures_total", {"result": "error", "algorithm": "rsa-sha256"}
        )
        == 1
    )
    assert "AAAA" not in caplog.text and "PRIVATE KEY" not in caplog.text


async def test_applicant_addresses_never_reach_the_logs_in_clear(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from mailrelay.app import setup_logging

    # Production policy: aiosmtpd's "mail.log" (every address at INFO) is held at WARNING even at DEBUG.
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("DEBUG", "text")
    root.handlers[:], root.level = saved
    assert logging.getLogger("mail.log").level == logging.WARNING
    caplog.set_level(logging.DEBUG, logger="mailrelay")
    applicants = ["yamada.taro@gmail.example", "sato.hanako@yahoo.example"]
    async with RecordingSink(refuse_recipients={"gone.away@gmail.example": "550 5.1.1 No such user"}) as sink:
        relay = await start_relay(make_settings(sink.port))
        await relay.send("recruit@acme.co.jp", [*applicants, "gone.away@gmail.example"], REJECTION)
        await relay.send("recruit@acme.co.jp", applicants, OFFER)
    assert len(sink.messages) == 3
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mailrelay"))
    for address in [*applicants, "gone.away@gmail.example"]:
        assert address not in ours
        assert address.split("@")[0] not in ours
    assert "y***@gmail.example" in ours  # masked, still useful to a mail admin
    metrics_text = "\n".join(str(m) for m in relay.components.metrics.registry.collect())
    assert "@" not in metrics_text.replace("@acme", "")


async def test_an_address_in_an_encoded_display_name_never_picks_the_tenant(
    start_relay, make_settings: SettingsFactory
) -> None:
    """RFC 2047 §5: an encoded word may stand only in a display name. Decoded before the address is parsed,
    "=?utf-8?q?recruit=40acme.co.jp?=" read as a mailbox of acme's, and a stranger's message was decorated
    and DKIM-signed with acme's key. The address is parsed first: not acme's mail, passed through."""
    forged = REJECTION.replace(
        b"From: Acme Recruiting <recruit@acme.co.jp>",
        b"From: =?utf-8?q?recruit=40acme.co.jp?= <someone@other.example>",
    )
    assert forged != REJECTION
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        refused, reply = await relay.send("bounce@other.example", ["applicant@gmail.example"], forged)
    assert refused == {} and reply.startswith("2")
    assert [m.content for m in sink.messages] == [forged]
    registry = relay.components.metrics.registry
    assert registry.get_sample_value("mailrelay_messages_passed_through_total", {"reason": "no_tenant"}) == 1


def _pieces(*alphabet: str, min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map("".join)


# Mailboxes ("name <local@domain>", "local@domain") of clean pieces, which the simple path reads, and of
# pieces with the odd special, space or encoded word, which mostly go to getaddresses.
_CLEAN_NAME = _pieces("a", "Z", " ", ".", "=?", "?=", "_", "採", "\t")
_CLEAN_ATOM = _pieces("a", "0", ".", "-", "採", min_size=1, max_size=6)
_NAME = st.one_of(_CLEAN_NAME, _pieces("a", " ", ".", "=?", '"', ",", "(", ")", "<", "@"))
_ATOM = st.one_of(_CLEAN_ATOM, _pieces("a", ".", " ", "<", ">", "@", "[", "]", ",", '"', max_size=6))
_TAIL = st.one_of(_pieces(" ", "\t"), _pieces(" ", ",", "(", ")", ">", "<", "a"))
_MAILBOXES = st.one_of(
    st.tuples(_NAME, _ATOM, _ATOM, _TAIL).map(lambda t: f"{t[0]}<{t[1]}@{t[2]}>{t[3]}"),
    st.tuples(_TAIL, _ATOM, _ATOM, _TAIL).map(lambda t: f"{t[0]}{t[1]}@{t[2]}{t[3]}"),
)


@settings(max_examples=3000, deadline=None)
@given(_MAILBOXES)
def test_the_simple_mailbox_path_finds_what_getaddresses_finds(value: str) -> None:
    """Issue 8: the usual From is read without email.utils; wherever that path answers, it answers as
    getaddresses would, and everything else still goes to getaddresses."""
    expected = next((address for _name, address in getaddresses([value]) if "@" in address), "")
    assert first_address([value]) == expected


def test_the_usual_from_values_take_the_simple_mailbox_path() -> None:
    for value in (
        "=?UTF-8?B?44Ko?= <recruit@example.co.jp>",
        "John Q. Public <jqp@example.org>",
        "a@b.example",
    ):
        assert _SIMPLE_MAILBOX.fullmatch(value), value
    for value in ('"Doe, J" <j@example.org>', "a@b.example, c@d.example", "x <a@[192.0.2.1]>", "y <a@b> (c)"):
        assert not _SIMPLE_MAILBOX.fullmatch(value), value
