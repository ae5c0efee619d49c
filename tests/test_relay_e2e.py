"""Issue 2, end to end over loopback SMTP: a real client → mailrelay → a recording sink, DKIM checked by
Perl's Mail::DKIM, events checked in the store."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import subprocess
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from conftest import KeyPairs, RunningRelay, SettingsFactory
from mailrelay.config import load_settings
from mailrelay.store import ReferralEvent
from support.dkim import verify_dkim
from support.sinks import RecordingSink

E2E = Path(__file__).resolve().parent / "e2e"
LINK_PREFIX = "https://careerrelay.jp/r/"


def fixture(name: str) -> bytes:
    return (E2E / name).read_bytes()


def events(relay: RunningRelay) -> list[ReferralEvent]:
    with relay.components.store.sessions() as session:
        return list(session.scalars(select(ReferralEvent)))


def header_fields(raw: bytes) -> list[bytes]:
    """Top-level header fields, each with its folded continuation lines, as raw bytes."""
    fields: list[bytes] = []
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def unchanged_header_fields(raw: bytes) -> set[bytes]:
    single_part = not any(f.lower().startswith(b"content-type: multipart/") for f in header_fields(raw))
    return {
        f
        for f in header_fields(raw)
        if not (single_part and f.lower().startswith((b"content-type:", b"content-transfer-encoding:")))
    }


def body_texts(raw: bytes) -> list[str]:
    """Every text part, decoded STRICTLY in its declared charset (a replacement character fails here)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    texts = []
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        charset = part.get_content_charset() or "us-ascii"
        codec = {"iso-2022-jp": "iso2022_jp", "shift_jis": "cp932"}.get(charset.lower(), charset)
        texts.append(payload.decode(codec, errors="strict"))
    return texts


def link_of(raw: bytes) -> str:
    for text in body_texts(raw):
        index = text.find(LINK_PREFIX)
        if index >= 0:
            end = index + len(LINK_PREFIX)
            while end < len(text) and (text[end].isalnum() or text[end] in "-_"):
                end += 1
            return text[index:end]
    raise AssertionError("no referral link in the message")


async def relay_to(sink: RecordingSink, start_relay, make_settings: SettingsFactory, **kw) -> RunningRelay:  # type: ignore[no-untyped-def]
    return await start_relay(make_settings(sink.port, **kw))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "footer_word"),
    [
        ("rejection_ja_iso2022.eml", "転職支援サービス"),
        ("rejection_ja_utf8_alternative.eml", "転職支援サービス"),
        ("rejection_en.eml", "help you find your next role"),
    ],
)
async def test_rejection_is_delivered_with_link_footer_and_valid_dkim(
    start_relay, make_settings: SettingsFactory, keys: KeyPairs, name: str, footer_word: str
) -> None:
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings, ed25519=True)
        original = fixture(name)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], original)

    assert len(sink.messages) == 1
    delivered = sink.messages[0]
    assert delivered.rcpt_tos == ["applicant@gmail.example"]
    texts = body_texts(delivered.content)
    assert all(footer_word in text for text in texts), texts
    link = link_of(delivered.content)
    assert len(link) > len(LINK_PREFIX) + 20
    # The original header fields are all still there, byte for byte, after the ones we prepend; only a
    # single-part message's own Content-Type/-Transfer-Encoding may change with its decorated body.
    assert unchanged_header_fields(original) <= set(header_fields(delivered.content))
    assert b"X-Mailrelay-Decorated: v=1;" in delivered.content
    result = verify_dkim(delivered.content, keys.dns(), require_domain="acme.co.jp")
    assert result.passed, result.signatures
    assert {s["algorithm"] for s in result.signatures} == {"rsa-sha256", "ed25519-sha256"}

    [event] = events(relay)
    assert event.tenant_id == "acme"
    assert link.endswith(event.token)
    assert event.recipient is None and len(event.recipient_hash) == 64
    # The hash every earlier version stored (dedupe of a retry across an upgrade compares them).
    key = bytes.fromhex(relay.components.settings.referral.hash_key_file.read_text().strip())
    assert event.recipient_hash == hmac.new(key, b"applicant@gmail.example", hashlib.sha256).hexdigest()
    assert event.message_id and event.message_id.startswith("<e2e-")
    assert event.next_hop_reply.startswith("2")


async def test_a_footer_line_that_starts_with_a_dot_arrives_as_written(
    start_relay, make_settings: SettingsFactory, keys: KeyPairs
) -> None:
    """The message arrives with no line to dot-stuff, so its copy is spliced as wire-ready (message.splice)
    and the next hop's client skips dot-stuffing it; footer lines that start with "." must still be stuffed
    (RFC 5321 §4.5.2), or the next hop drops the dot, and a lone "." ends the data early."""
    async with RecordingSink() as sink:
        settings = make_settings(sink.port)
        text = settings.source.read_text(encoding="utf-8")
        footer = 'text = "--\\n{company} would like'
        assert footer in text
        settings.source.write_text(text.replace(footer, 'text = ".\\n.careers\\n{company} would like'))
        relay = await start_relay(load_settings(settings.source))
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], fixture("rejection_en.eml"))

    [delivered] = sink.messages
    assert b"\r\n.\r\n.careers\r\nAcme" in delivered.content
    assert delivered.content.endswith(b"\r\n")
    assert verify_dkim(delivered.content, keys.dns(), require_domain="acme.co.jp").passed
    assert len(events(relay)) == 1


async def test_large_rejection_is_signed_in_chunks_and_verifies(
    start_relay, make_settings: SettingsFactory, keys: KeyPairs
) -> None:
    """Over signing.BODY_CHUNK_BYTES dkimpy canonicalises the body a chunk at a time (issue 5, loop stalls);
    whitespace runs and trailing blanks on many lines exercise relaxed canonicalisation across chunks."""
    # An attachment keeps its bytes (the decorated text part is re-encoded), so its blanks reach the signer.
    spaced = b"".join(b"line %d \t with  runs\t \r\n" % i for i in range(20_000))
    attachment = base64.encodebytes(bytes(range(256)) * 4096).replace(b"\n", b"\r\n")
    original = (
        b"From: Acme Recruiting <recruit@acme.co.jp>\r\nTo: applicant@gmail.example\r\n"
        b"Subject: Your application to Acme\r\nMessage-ID: <e2e-large@acme.co.jp>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        b"Thank you for applying. We regret to inform you that we will not be moving forward with your "
        b"application.\r\n"
        b'--b\r\nContent-Type: text/plain; charset=us-ascii; name="notes.txt"\r\n'
        b'Content-Disposition: attachment; filename="notes.txt"\r\n\r\n'
        + spaced
        + b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment
        + b"--b--\r\n\r\n\r\n"
    )
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings, ed25519=True)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], original)

    [delivered] = sink.messages
    assert len(delivered.content) > 4 * 256 * 1024
    assert b"X-Mailrelay-Decorated: v=1;" in delivered.content
    assert spaced in delivered.content
    result = verify_dkim(delivered.content, keys.dns(), require_domain="acme.co.jp")
    assert result.passed, result.signatures
    assert {s["algorithm"] for s in result.signatures} == {"rsa-sha256", "ed25519-sha256"}


async def test_bcc_batch_becomes_one_copy_per_applicant_with_its_own_link(
    start_relay, make_settings: SettingsFactory, keys: KeyPairs
) -> None:
    applicants = ["a@gmail.example", "b@yahoo.example", "c@outlook.example"]
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        errors, _ = await relay.send(
            "recruit@acme.co.jp", [*applicants, "hr@acme.co.jp"], fixture("rejection_ja_bcc_batch.eml")
        )
    assert errors == {}
    by_rcpt = {tuple(m.rcpt_tos): m.content for m in sink.messages}
    assert set(by_rcpt) == {(a,) for a in applicants} | {("hr@acme.co.jp",)}
    links = {link_of(by_rcpt[(a,)]) for a in applicants}
    assert len(links) == 3
    for a in applicants:
        assert verify_dkim(by_rcpt[(a,)], keys.dns(), require_domain="acme.co.jp").passed
    # The company's own copy is the original, untouched.
    assert by_rcpt[("hr@acme.co.jp",)] == fixture("rejection_ja_bcc_batch.eml")
    assert sorted(e.token for e in events(relay)) == sorted(link.rsplit("/", 1)[1] for link in links)


@pytest.mark.parametrize(
    ("name", "recipient"),
    [
        ("interview_invitation_ja.eml", "applicant@gmail.example"),
        ("offer_ja.eml", "applicant@gmail.example"),
        ("internal_ja.eml", "hr-team@acme.co.jp"),
        # A rejection to the company's own address is never decorated.
        ("rejection_ja_iso2022.eml", "recruit-archive@acme.co.jp"),
    ],
)
async def test_other_mail_arrives_byte_identical_and_records_nothing(
    start_relay, make_settings: SettingsFactory, name: str, recipient: str
) -> None:
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        await relay.send("recruit@acme.co.jp", [recipient], fixture(name))
    assert [m.content for m in sink.messages] == [fixture(name)]
    assert events(relay) == []


def smime_signed_rejection(tmp_path: Path) -> bytes:
    """A real S/MIME signature made with openssl over a rejection text."""
    key, cert = tmp_path / "s.key", tmp_path / "s.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-subj", "/CN=recruit@acme.co.jp", "-days", "30"],
        check=True, capture_output=True,
    )  # fmt: skip
    inner = tmp_path / "inner.txt"
    inner.write_bytes(
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        + fixture("rejection_en.eml").split(b"\r\n\r\n", 1)[1]
    )
    signed = subprocess.run(
        ["openssl", "smime", "-sign", "-in", inner, "-signer", cert, "-inkey", key, "-crlfeol",
         "-from", "recruit@acme.co.jp", "-to", "applicant@gmail.example", "-subject", "Your application"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_signed_rejection_arrives_byte_identical(
    start_relay, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    original = smime_signed_rejection(tmp_path)
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], original)
    assert [m.content for m in sink.messages] == [original]
    assert events(relay) == []
    (tmp_path / "out.eml").write_bytes(sink.messages[0].content)
    verified = subprocess.run(
        ["openssl", "smime", "-verify", "-noverify", "-in", tmp_path / "out.eml"], capture_output=True
    )
    assert verified.returncode == 0, verified.stderr


async def test_base64_text_parts_are_checked_by_decoding_not_by_bytes(
    start_relay, make_settings: SettingsFactory
) -> None:
    # The HTML alternative is base64: its footer must be found after decoding, and the link must match
    # the one in the text alternative (one applicant, one link).
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        await relay.send(
            "recruit@acme.co.jp", ["applicant@gmail.example"], fixture("rejection_ja_utf8_alternative.eml")
        )
    plain, html = body_texts(sink.messages[0].content)
    [event] = events(relay)
    assert event.token in plain and event.token in html
    assert html.rstrip().endswith("</html>")
    assert html.index(event.token) < html.lower().rindex("</body>")
    assert base64  # the fixture's HTML part is base64 (see make_messages.py)


async def test_client_outside_client_networks_gets_554_at_rcpt(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings, client_networks='["192.0.2.0/24"]')
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], fixture("rejection_en.eml"))
    [refusal] = info.value.recipients
    assert refusal.code == 554 and refusal.message.startswith("5.7.1")
    assert sink.messages == []


async def test_rejections_seen_count_every_rejection_once_decorated_or_not(
    start_relay, make_settings: SettingsFactory
) -> None:
    """The report's follow-up rate needs every rejection mail, also those that got no link (issue 6)."""
    from mailrelay.store.models import RejectionSeen

    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], fixture("rejection_en.eml"))
        await relay.send(
            "recruit@acme.co.jp", ["applicant@gmail.example"], fixture("rejection_en.eml")
        )  # retry
        await relay.send("recruit@acme.co.jp", ["archive@acme.co.jp"], fixture("rejection_ja_iso2022.eml"))
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], fixture("offer_ja.eml"))
    with relay.components.store.sessions() as session:
        rows = list(session.scalars(select(RejectionSeen)))
    assert sorted((r.tenant_id, r.decorated) for r in rows) == [("acme", False), ("acme", True)]


async def test_a_rejection_hands_its_announced_write_in_and_simultaneous_ones_all_record(
    start_relay, make_settings: SettingsFactory
) -> None:
    """A rejection announces its write to the group commit before it forwards (issue 8) and hands that very
    write in: with the wait unbounded, a write that did not would hold its own commit until the client
    gave up. Rejections relayed at the same time each get their event, and a non-rejection among them
    announces nothing."""
    async with RecordingSink() as sink:
        relay = await relay_to(sink, start_relay, make_settings)
        relay.components.store.sibling_wait = 3600.0
        await asyncio.gather(
            relay.send("recruit@acme.co.jp", ["a@gmail.example"], fixture("rejection_en.eml")),
            relay.send("recruit@acme.co.jp", ["b@gmail.example"], fixture("rejection_ja_iso2022.eml")),
            relay.send(
                "recruit@acme.co.jp", ["c@gmail.example"], fixture("rejection_ja_utf8_alternative.eml")
            ),
            relay.send("recruit@acme.co.jp", ["d@gmail.example"], fixture("offer_ja.eml")),
        )
    assert len(sink.messages) == 4
    assert len(events(relay)) == 3
    assert relay.components.store._expected == 0
