"""Issue 2 §1, §4, §5, §8: what the relay offers, requires and exposes around the core path."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import aiosmtplib
import dkim
import pytest

from bench.ports import free_port
from conftest import KeyPairs, SettingsFactory
from mailrelay import signing
from mailrelay.app import build, start_metrics_server
from mailrelay.cli import main
from mailrelay.config import Settings, load_settings
from mailrelay.relay import Transaction
from support.dkim import verify_dkim
from support.sinks import RecordingSink, send_raw_smtp

E2E = Path(__file__).resolve().parent / "e2e"
REJECTION = (E2E / "rejection_en.eml").read_bytes()


async def test_ehlo_offers_size_8bitmime_pipelining_and_smtputf8(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        replies = await send_raw_smtp(relay.host, relay.port, [b"EHLO client.test\r\n", b"QUIT\r\n"])
    ehlo = b"\n".join(replies).decode()
    for keyword in ("SIZE 33554432", "8BITMIME", "PIPELINING", "SMTPUTF8"):
        assert f"250-{keyword}" in ehlo or f"250 {keyword}" in ehlo, ehlo


async def test_required_starttls_toward_a_next_hop_without_it_is_451_never_plaintext(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port, starttls="required"))
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
    assert info.value.code == 451
    assert sink.events == []  # not even MAIL FROM went out in plaintext


async def test_metrics_endpoint_counts_received_decorated_and_events(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
        await relay.send(
            "recruit@acme.co.jp", ["applicant@gmail.example"], (E2E / "offer_ja.eml").read_bytes()
        )
    port = free_port()
    runner = await start_metrics_server(relay.components.metrics, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    finally:
        await runner.cleanup()
    assert "mailrelay_messages_received_total 2.0" in text
    assert "mailrelay_copies_decorated_total 1.0" in text
    assert 'mailrelay_messages_passed_through_total{reason="not_rejection"} 1.0' in text
    assert 'mailrelay_referral_events_total{tenant="acme"} 1.0' in text
    assert 'mailrelay_dkim_signatures_total{algorithm="rsa-sha256",result="signed"} 1.0' in text
    assert 'mailrelay_next_hop_replies_total{class="2xx"} 2.0' in text
    assert "mailrelay_processing_duration_seconds_count 2.0" in text
    # Only the rejection writes to the store before its reply.
    assert "mailrelay_recording_duration_seconds_count 1.0" in text
    # Labels come from closed sets: no address, token or message id ever appears.
    assert "@" not in text


@pytest.mark.parametrize("field_name", [b"DKIM-Signature", b"dkim-signature"])  # names are case-blind
async def test_the_senders_own_broken_dkim_signature_is_removed_and_ours_verifies(
    start_relay, make_settings: SettingsFactory, keys: KeyPairs, tmp_path: Path, field_name: bytes
) -> None:
    from mailrelay.signing import make_key_pair

    hr_txt = make_key_pair(tmp_path / "hr.key", "rsa-sha256")
    hr_key = (tmp_path / "hr.key").read_bytes()
    hr_signature = dkim.sign(REJECTION, b"hr", b"acme.co.jp", hr_key, include_headers=[b"from", b"subject"])
    original = hr_signature.replace(b"DKIM-Signature", field_name, 1) + REJECTION
    other = dkim.sign(original, b"esp", b"esp.example", hr_key, include_headers=[b"from"])
    original = other + original
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], original)
    delivered = sink.messages[0].content
    assert b"s=hr;" not in delivered.replace(b"\r\n ", b" ")  # the company's old, now broken signature
    assert other in delivered  # someone else's signature is left as it came
    dns = {**keys.dns(), "hr._domainkey.acme.co.jp": hr_txt}
    result = verify_dkim(delivered, dns, require_domain="acme.co.jp")
    assert any(s["domain"] == "acme.co.jp" and s["result"] == "pass" for s in result.signatures), result


def test_d_is_the_tenant_domain_nearest_the_from_domain(
    make_settings: SettingsFactory, keys: KeyPairs
) -> None:
    """A copy is signed with d= the domain of its From: address (docs/install.md). A tenant that listed its
    parent domain before a subdomain it sends from got d= the parent, which DMARC's strict alignment
    (adkim=s, RFC 7489 §3.1.1) fails although the subdomain's own key is published."""
    settings = make_settings()
    tenant = dataclasses.replace(
        settings.tenants[0], domains=("acme.co.jp", "jobs.acme.co.jp", "acme.example")
    )
    components = build(dataclasses.replace(settings, tenants=(tenant,)))
    content = REJECTION.replace(b"recruit@acme.co.jp", b"recruit@jobs.acme.co.jp")
    assert content != REJECTION
    txn = Transaction("T1", "recruit@jobs.acme.co.jp", [], ["applicant@gmail.example"], content)
    (group,) = components.relay.plan(txn, lambda _reason: None).groups
    assert group.copy is not None and group.copy.signed_domain == "jobs.acme.co.jp"
    result = verify_dkim(group.content, keys.dns("jobs.acme.co.jp"), require_domain="jobs.acme.co.jp")
    assert result.passed, result
    # A deeper subdomain takes the nearest listed domain; one under no other listed domain, its parent.
    nearest = components.signer.signing_domain
    assert nearest(tenant, "hr.jobs.acme.co.jp") == "jobs.acme.co.jp"
    assert nearest(tenant, "hr.acme.co.jp") == "acme.co.jp"
    assert nearest(tenant, "ACME.example.") == "acme.example"
    assert nearest(tenant, "other.example") == "acme.co.jp"
    components.relay.journal.close()
    components.store.close()


def test_an_idn_tenant_domain_is_signed_for_in_a_labels(
    make_settings: SettingsFactory, keys: KeyPairs
) -> None:
    """RFC 6376 §3.5: d= carries an internationalised domain name as A-labels. A tenant domain written in
    U-labels (config takes them: an SMTPUTF8 From domain arrives so) went into d= and i= as UTF-8, a name no
    verifier finds the key under; `dkim dns` printed a zone line for that name, not the A-label one."""
    settings = make_settings()
    tenant = dataclasses.replace(settings.tenants[0], domains=("例え.jp",))
    components = build(dataclasses.replace(settings, tenants=(tenant,)))
    content = REJECTION.replace(b"recruit@acme.co.jp", "recruit@例え.jp".encode())
    txn = Transaction("T2", "recruit@例え.jp", ["SMTPUTF8"], ["applicant@gmail.example"], content)
    (group,) = components.relay.plan(txn, lambda _reason: None).groups
    assert group.copy is not None and group.copy.signed_domain == "xn--r8jz45g.jp"
    assert (
        b"d=xn--r8jz45g.jp;" in group.content
        and "From: Acme Recruiting <recruit@例え.jp>".encode() in group.content
    )
    result = verify_dkim(group.content, keys.dns("xn--r8jz45g.jp"), require_domain="xn--r8jz45g.jp")
    assert result.passed, result
    assert signing.dns_record("mr1", "例え.jp", "v=DKIM1").startswith("mr1._domainkey.xn--r8jz45g.jp. IN TXT")
    components.relay.journal.close()
    components.store.close()


def test_an_idn_tenants_own_signature_with_d_in_a_labels_is_removed(
    make_settings: SettingsFactory, keys: KeyPairs, tmp_path: Path
) -> None:
    """A DKIM-Signature carries d= in A-labels (RFC 6376 §3.5); strip-dkim compared it with the tenant's
    domains as config holds them, in U-labels, so the company's own signature, broken by the footer, was
    left on the copy beside ours."""
    from mailrelay.signing import make_key_pair

    hr_txt = make_key_pair(tmp_path / "hr.key", "rsa-sha256")
    content = REJECTION.replace(b"recruit@acme.co.jp", "recruit@例え.jp".encode())
    hr_signature = dkim.sign(
        content, b"hr", b"xn--r8jz45g.jp", (tmp_path / "hr.key").read_bytes(), include_headers=[b"from"]
    )
    settings = make_settings()
    tenant = dataclasses.replace(settings.tenants[0], domains=("例え.jp",))
    components = build(dataclasses.replace(settings, tenants=(tenant,)))
    txn = Transaction(
        "T3", "recruit@例え.jp", ["SMTPUTF8"], ["applicant@gmail.example"], hr_signature + content
    )
    (group,) = components.relay.plan(txn, lambda _reason: None).groups
    assert group.copy is not None
    assert b"s=hr;" not in group.content.replace(b"\r\n ", b" ")
    dns = {**keys.dns("xn--r8jz45g.jp"), "hr._domainkey.xn--r8jz45g.jp": hr_txt}
    result = verify_dkim(group.content, dns, require_domain="xn--r8jz45g.jp")
    assert result.passed, result
    components.relay.journal.close()
    components.store.close()


def test_a_broken_rule_file_stops_the_daemon_with_exit_2(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.toml").write_text('[[rule]]\nid = "x"\nmode = "loud"\n', encoding="utf-8")
    settings = make_settings(rules=str(rules / "*.toml"))
    assert main(["serve", "--config", str(settings.source)]) == 2
    assert main(["check", "--config", str(settings.source), str(E2E / "rejection_en.eml")]) == 2
    err = capsys.readouterr().err
    assert f"{rules / 'bad.toml'} › x › " in err


async def test_other_sessions_are_served_while_one_message_burns_cpu(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 3/5: planning runs off the event loop; a pathological message does not stop other sessions.

    The heavy plan burns CPU until the other message has been relayed (30 s at most), so the test waits for
    an order of events, not for a time: were planning on the event loop, nothing else would be relayed while
    it burns, and the heavy message would finish first, after the 30 s."""
    import threading
    import time

    from mailrelay.relay import Relay

    original = Relay.plan
    burning, other_done = threading.Event(), threading.Event()

    def slow_plan(self: Relay, txn, *args):  # type: ignore[no-untyped-def]
        if b"pathological" in txn.content:
            burning.set()
            deadline = time.perf_counter() + 30
            while not other_done.is_set() and time.perf_counter() < deadline:
                sum(range(1000))  # pure-Python CPU work, holding the GIL in slices
        return original(self, txn, *args)

    monkeypatch.setattr(Relay, "plan", slow_plan)
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        # Large enough to be planned off the event loop (relay.INLINE_PLAN_BYTES).
        big = REJECTION.replace(b"Dear", b"pathological") + b"padding line\r\n" * 6000
        heavy = asyncio.ensure_future(relay.send("recruit@acme.co.jp", ["a@gmail.example"], big))
        while not burning.is_set():
            assert not heavy.done(), heavy.result()  # it failed before burning: fail here, do not hang
            await asyncio.sleep(0.01)
        await relay.send("recruit@acme.co.jp", ["b@gmail.example"], REJECTION)
        finished_first = [m.rcpt_tos for m in sink.messages]
        other_done.set()
        await heavy
    assert finished_first == [["b@gmail.example"]]


def with_smtp_timeout(settings: Settings, seconds: float) -> Settings:
    text = settings.source.read_text(encoding="utf-8")
    text = text.replace("[smtp]\n", f"[smtp]\ntimeout = {seconds}\n", 1)
    settings.source.write_text(text, encoding="utf-8")
    return load_settings(settings.source)


async def test_a_client_sending_its_data_steadily_outlasts_the_idle_timeout(
    start_relay, make_settings: SettingsFactory
) -> None:
    """smtp.timeout is how long a client may stay silent (config.toml; RFC 5321 §4.5.3.2.7). Found by review:
    the timer ran from the DATA command, however steadily the data came, so a message that took longer
    than smtp.timeout to arrive was cut off, and every retry with it."""
    async with RecordingSink() as sink:
        relay = await start_relay(with_smtp_timeout(make_settings(sink.port), 1))
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        await reader.readline()
        writer.write(
            b"EHLO client.test\r\nMAIL FROM:<recruit@acme.co.jp>\r\nRCPT TO:<applicant@gmail.example>\r\n"
            b"DATA\r\n"
        )
        while not (await reader.readline()).startswith(b"354"):
            pass
        step = len(REJECTION) // 10 + 1
        for start in range(0, len(REJECTION), step):  # ten pieces over 3 s, never 1 s apart
            writer.write(REJECTION[start : start + step])
            await writer.drain()
            await asyncio.sleep(0.3)
        writer.write(b".\r\nQUIT\r\n")
        reply = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert reply.startswith(b"250"), reply
    assert len(sink.messages) == 1


async def test_a_client_waiting_for_the_reply_to_its_data_outlasts_the_idle_timeout(
    start_relay, make_settings: SettingsFactory
) -> None:
    """Found by review: the client's idle timer ran on while the relay forwarded its message, and a next hop
    that took longer to answer than was left of it had the connection closed under a transaction about to
    answer 250 (the next hop had the message; the client, with no reply, sent it again)."""
    from aiosmtpd.smtp import SMTP

    class SlowHop:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            await asyncio.sleep(1.5)
            return "250 2.0.0 slow but fine"

    loop = asyncio.get_running_loop()
    hop = await loop.create_server(lambda: SMTP(SlowHop(), hostname="hop.test"), "127.0.0.1", 0)
    try:
        relay = await start_relay(with_smtp_timeout(make_settings(hop.sockets[0].getsockname()[1]), 1))
        refused, reply = await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION)
    finally:
        hop.close()
    assert refused == {} and reply == "2.0.0 slow but fine"
