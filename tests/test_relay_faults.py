"""Issue 2 §5–6: what the sender hears when the next hop or our own code fails, and that nothing is lost,
doubled, or recorded for a copy the next hop did not accept."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import select

from conftest import RunningRelay, SettingsFactory
from mailrelay import transport
from mailrelay.metrics import HOP_STAGES
from mailrelay.relay import RelaySession, StoreRead
from mailrelay.store import ReferralEvent
from support.sinks import RecordingSink, _SinkHandler, send_raw_smtp

E2E = Path(__file__).resolve().parent / "e2e"
REJECTION = (E2E / "rejection_ja_iso2022.eml").read_bytes()
OFFER = (E2E / "offer_ja.eml").read_bytes()
SENDER = "recruit@acme.co.jp"
# Over transport.WIRE_CHECK_OFF_LOOP_BYTES, with lines that start with a dot: wire-checked in a thread.
LARGE_WITH_DOT_LINES = OFFER + b"".join(
    b".line %05d of padding, dot-stuffed on the wire\r\n" % i for i in range(2000)
)


def event_count(relay: RunningRelay) -> int:
    with relay.components.store.sessions() as session:
        return len(list(session.scalars(select(ReferralEvent.id))))


async def send_expecting_error(relay: RunningRelay, recipients: list[str], content: bytes) -> Exception:
    with pytest.raises(aiosmtplib.SMTPException) as info:
        await relay.send(SENDER, recipients, content)
    return info.value


@pytest.mark.parametrize("content", [REJECTION, OFFER], ids=["decorated", "passthrough"])
async def test_next_hop_451_at_end_of_data_is_passed_on_as_451(
    start_relay, make_settings: SettingsFactory, content: bytes
) -> None:
    async with RecordingSink(replies={".": "451 4.3.0 Try again later"}) as sink:
        relay = await start_relay(make_settings(sink.port))
        error = await send_expecting_error(relay, ["applicant@gmail.example"], content)
    assert isinstance(error, aiosmtplib.SMTPDataError)
    assert (error.code, error.message) == (451, "4.3.0 Try again later")
    assert sink.messages == [] and event_count(relay) == 0


@pytest.mark.parametrize("content", [REJECTION, OFFER], ids=["decorated", "passthrough"])
async def test_next_hop_550_at_end_of_data_is_passed_on_as_550(
    start_relay, make_settings: SettingsFactory, content: bytes
) -> None:
    async with RecordingSink(replies={".": "550 5.7.1 Content rejected"}) as sink:
        relay = await start_relay(make_settings(sink.port))
        error = await send_expecting_error(relay, ["applicant@gmail.example"], content)
    assert isinstance(error, aiosmtplib.SMTPDataError)
    assert (error.code, error.message) == (550, "5.7.1 Content rejected")
    assert event_count(relay) == 0


async def test_one_of_three_recipients_refused_is_refused_live_and_the_others_delivered(
    start_relay, make_settings: SettingsFactory
) -> None:
    refuse = {"gone@gmail.example": "550 5.1.1 No such user"}
    async with RecordingSink(refuse_recipients=refuse) as sink:
        relay = await start_relay(make_settings(sink.port))
        refused, reply = await relay.send(
            SENDER, ["a@gmail.example", "gone@gmail.example", "b@gmail.example"], REJECTION
        )
    assert {r: (v.code, v.message) for r, v in refused.items()} == {
        "gone@gmail.example": (550, "5.1.1 No such user")
    }
    assert reply.startswith("2")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["a@gmail.example", "b@gmail.example"]
    assert event_count(relay) == 2


@pytest.mark.parametrize(
    ("sink_kwargs", "label"),
    [
        ({"hang_up": {"."}}, "hangs up after the data"),
        ({"stall": {"."}}, "never answers the final dot"),
        ({"replies": {"CONNECT": "421 4.3.2 Not now"}}, "421 at greeting"),
        ({"replies": {"MAIL": "421 4.3.2 Shutting down"}}, "421 to MAIL"),
    ],
)
async def test_next_hop_without_a_usable_reply_gives_451_and_records_nothing(
    start_relay, make_settings: SettingsFactory, sink_kwargs: dict[str, object], label: str
) -> None:
    async with RecordingSink(**sink_kwargs) as sink:  # type: ignore[arg-type]
        relay = await start_relay(make_settings(sink.port, timeout=1, transaction_timeout=3))
        error = await send_expecting_error(relay, ["applicant@gmail.example"], REJECTION)
    code = error.code if isinstance(error, aiosmtplib.SMTPResponseException) else None
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        code = error.recipients[0].code
    assert code == 451, (label, error)
    assert "Traceback" not in str(error) and "Error" not in str(error)
    assert event_count(relay) == 0


async def test_next_hop_down_gives_451_4_4_1(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with RecordingSink() as sink:
        port = sink.port
    relay = await start_relay(make_settings(port))  # nothing listens there any more
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        error = await send_expecting_error(relay, ["applicant@gmail.example"], OFFER)
    assert isinstance(error, aiosmtplib.SMTPSenderRefused)
    assert (error.code, error.message) == (451, "4.4.1 Next hop not available, please try again later")
    # The admin reads why, under the queue id of the refused MAIL.
    lost = [m for m in caplog.messages if "next hop unavailable" in m]
    assert len(lost) == 1 and re.fullmatch(r"[0-9A-F]{10}: next hop unavailable \(connect: .+\)", lost[0])
    assert f"{lost[0][:10]}: client=[127.0.0.1] from=<{SENDER}> refused: 451 4.4.1" in caplog.text
    # Counted for the critical alert (deploy/prometheus/alerts.yml): with MAIL mirrored live, a next hop that
    # is down never gets as far as end of data, where mailrelay_next_hop_replies_total counts.
    registry = relay.components.metrics.registry
    assert registry.get_sample_value("mailrelay_next_hop_unavailable_total", {"stage": "connect"}) == 1


@pytest.mark.parametrize(
    ("hang_up", "stage"), [("MAIL", "MAIL"), ("RCPT", "RCPT"), ("DATA", "DATA"), (".", "DATA")]
)
async def test_a_next_hop_that_hangs_up_is_logged_as_a_hang_up_at_its_command_not_a_connect_failure(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, hang_up: str, stage: str
) -> None:
    """The connection was made: the log says at which command the next hop closed it ("." is the reply to
    the final dot, part of DATA), under the transaction's queue id; the sender hears 451 4.4.1 as before."""
    async with RecordingSink(hang_up={hang_up}) as sink:
        relay = await start_relay(make_settings(sink.port, timeout=1, transaction_timeout=3))
        with caplog.at_level(logging.INFO, logger="mailrelay"):
            error = await send_expecting_error(relay, ["applicant@gmail.example"], REJECTION)
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        error = error.recipients[0]
    assert isinstance(error, aiosmtplib.SMTPResponseException)
    assert (error.code, error.message) == (451, "4.4.1 Next hop not available, please try again later")
    lost = [m for m in caplog.messages if "next hop unavailable" in m]
    assert len(lost) == 1, caplog.messages
    assert re.fullmatch(rf"[0-9A-F]{{10}}: next hop unavailable \(disconnect at {stage}: .+\)", lost[0])
    queue_id = lost[0][:10]
    assert sum(m.startswith(f"{queue_id}: ") and "451 4.4.1" in m for m in caplog.messages) == 1
    # The next hop's replies to end of data: none could be had, counted as such (only DATA gets that far).
    registry = relay.components.metrics.registry
    unavailable = registry.get_sample_value("mailrelay_next_hop_replies_total", {"class": "unavailable"})
    assert unavailable == (1 if stage == "DATA" else 0)
    # Wherever it was lost, the loss is counted, for the alert on an unreachable next hop.
    lost_at = {
        s: registry.get_sample_value("mailrelay_next_hop_unavailable_total", {"stage": s}) for s in HOP_STAGES
    }
    assert lost_at == {s: (1 if s == stage else 0) for s in HOP_STAGES}
    assert event_count(relay) == 0


async def test_a_failed_copy_after_delivered_ones_defers_and_the_retry_sends_no_duplicate(
    start_relay,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 2 §5: one applicant's copy fails after others were delivered → 4xx; the retry must not send
    the delivered copies twice, nor count them twice."""
    applicants = ["a@gmail.example", "b@gmail.example", "c@gmail.example"]
    failed = fail_final_dot_once_for(monkeypatch, "b@gmail.example")
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        error = await send_expecting_error(relay, applicants, REJECTION)
        assert isinstance(error, aiosmtplib.SMTPDataError) and error.code == 451
        assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["a@gmail.example", "c@gmail.example"]
        assert failed == [1]
        # The sending MTA retries the very same message to the same recipients.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mailrelay.relay"):
            refused, reply = await relay.send(SENDER, applicants, REJECTION)
    assert refused == {} and reply.startswith("2")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == applicants
    assert event_count(relay) == 3
    # The admin reading the retry's log sees each skipped copy under the retry's queue id, masked (issue 5).
    skipped = [r.getMessage() for r in caplog.records if "earlier attempt" in r.getMessage()]
    queue_id = skipped[0].partition(":")[0]
    assert skipped == [
        f"{queue_id}: to=<a***@gmail.example> status=sent (delivered by an earlier attempt)",
        f"{queue_id}: to=<c***@gmail.example> status=sent (delivered by an earlier attempt)",
    ]
    assert any(
        m.startswith(f"{queue_id}: to=<b***@gmail.example> status=sent (250 ") for m in caplog.messages
    )


def fail_final_dot_once_for(monkeypatch: pytest.MonkeyPatch, recipient: str) -> list[int]:
    """The sink answers 451 to the final dot of the first transaction for `recipient`, then accepts."""
    failed = [0]
    original = _SinkHandler.handle_DATA

    async def handle_data(self: _SinkHandler, server: object, session: object, envelope: Any) -> str:
        if not failed[0] and recipient in envelope.rcpt_tos:
            failed[0] += 1
            return "451 4.3.0 Try again later"
        return await original(self, server, session, envelope)  # type: ignore[arg-type]

    monkeypatch.setattr(_SinkHandler, "handle_DATA", handle_data)
    return failed


async def test_copies_delivered_before_the_transaction_timeout_stay_delivered_and_are_not_sent_again(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: when next_hop.transaction_timeout ran out after a's copy was accepted, the relay
    forgot it (nothing recorded), and the sender's retry sent a a second copy."""
    applicants = ["a@gmail.example", "b@gmail.example"]
    release = asyncio.Event()
    original = _SinkHandler.handle_DATA

    async def handle_data(self: _SinkHandler, server: object, session: object, envelope: Any) -> str:
        if "b@gmail.example" in envelope.rcpt_tos and not release.is_set():
            await release.wait()  # b's first copy is not answered in time
            return "451 4.3.0 Too late"
        # a's copy takes a while, so that b's DATA, though no longer than a command may take, is still
        # unanswered when the transaction's time runs out.
        await asyncio.sleep(0.3)
        return await original(self, server, session, envelope)  # type: ignore[arg-type]

    monkeypatch.setattr(_SinkHandler, "handle_DATA", handle_data)
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port, timeout=1, transaction_timeout=1))
        error = await send_expecting_error(relay, applicants, REJECTION)
        release.set()
        assert isinstance(error, aiosmtplib.SMTPDataError) and error.code == 451
        assert [m.rcpt_tos for m in sink.messages] == [["a@gmail.example"]]
        assert event_count(relay) == 1  # a's referral, made when its copy was accepted
        # The next hop that let the time run out is counted as lost during DATA, for the alert.
        registry = relay.components.metrics.registry
        assert registry.get_sample_value("mailrelay_next_hop_unavailable_total", {"stage": "DATA"}) == 1
        refused, reply = await relay.send(SENDER, applicants, REJECTION)
    assert refused == {} and reply.startswith("2")
    assert [m.rcpt_tos for m in sink.messages] == [["a@gmail.example"], ["b@gmail.example"]]
    assert event_count(relay) == 2


@pytest.mark.parametrize("content", [REJECTION, OFFER], ids=["decorated", "passthrough"])
async def test_a_refused_data_command_leaves_the_session_usable(
    start_relay, make_settings: SettingsFactory, content: bytes
) -> None:
    """Found by review: a refusal of the DATA command itself leaves the next hop's transaction open; the
    relay took it as ended, so every later MAIL of the session met "503 nested MAIL", a 5xx of our own."""
    async with RecordingSink(replies={"DATA": "451 4.7.1 Try again later"}) as sink:
        relay = await start_relay(make_settings(sink.port))
        client = aiosmtplib.SMTP(hostname=relay.host, port=relay.port)
        await client.connect()
        errors = []
        for recipients in (["a@gmail.example"], ["a@gmail.example", "b@gmail.example"], ["c@gmail.example"]):
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await client.sendmail(SENDER, recipients, content)
            errors.append((info.value.code, info.value.message))
        await client.quit()
    assert errors == [(451, "4.7.1 Try again later")] * 3
    assert [e for e in sink.events if e[0] == "MAIL"] and sink.messages == []


async def test_a_recipient_given_twice_gets_one_decorated_copy(
    start_relay, make_settings: SettingsFactory
) -> None:
    """Found by review: each RCPT of the same applicant became a copy of its own, with a link of its own."""
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        refused, reply = await relay.send(SENDER, ["a@gmail.example", "a@gmail.example"], REJECTION)
    assert refused == {} and reply.startswith("2")
    assert [m.rcpt_tos for m in sink.messages] == [["a@gmail.example"]]
    assert event_count(relay) == 1


async def test_exception_inside_decoration_forwards_the_original(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailrelay.stages.footer as footer_stage

    def broken(copy: object) -> object:
        raise RuntimeError("bug in the footer template")

    monkeypatch.setattr(footer_stage, "render", broken)
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        refused, reply = await relay.send(SENDER, ["applicant@gmail.example"], REJECTION)
    assert refused == {} and reply.startswith("2")
    assert [m.content for m in sink.messages] == [REJECTION]
    assert event_count(relay) == 0
    failed = relay.components.metrics.failed_open.labels(stage="decorate")._value.get()
    assert failed == 1


async def test_exception_inside_the_handler_is_451_with_generic_text_and_the_session_goes_on(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: RelaySession, *args: object, **kwargs: object) -> object:
        raise RuntimeError("db down: password=hunter2 host=10.0.0.5")

    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        monkeypatch.setattr(RelaySession, "_conclude", broken)
        replies = await send_raw_smtp(
            relay.host,
            relay.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<recruit@acme.co.jp>\r\n",
                b"RCPT TO:<applicant@gmail.example>\r\n",
                b"DATA\r\n",
                REJECTION + b".\r\n",
                b"MAIL FROM:<recruit@acme.co.jp>\r\n",
                b"QUIT\r\n",
            ],
        )
    text = b"\n".join(replies).decode()
    assert "451 4.3.0 Temporary failure, please try again later" in text
    assert "hunter2" not in text and "RuntimeError" not in text
    # The transaction was reset: the next MAIL is accepted, not "503 nested MAIL".
    assert "503" not in text
    assert text.count("250 2.1.0") + text.count("250 OK") + text.count("250 2.0.0") >= 2


async def test_client_hanging_up_after_the_dot_still_completes_forwarding_and_recording(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        for line in (b"EHLO c\r\n", b"MAIL FROM:<recruit@acme.co.jp>\r\n", b"RCPT TO:<a@gmail.example>\r\n"):
            writer.write(line)
        writer.write(b"DATA\r\n")
        await writer.drain()
        while not (await reader.readline()).startswith(b"354"):
            pass
        writer.write(REJECTION + b".\r\n")
        await writer.drain()
        writer.close()  # gone before the reply
        await sink.wait_for_messages(1)
        for _ in range(50):
            if event_count(relay) == 1:
                break
            await asyncio.sleep(0.05)
    assert len(sink.messages) == 1
    assert event_count(relay) == 1


async def test_a_retry_of_an_already_delivered_message_leaves_the_session_usable(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the benchmark: after `250 already delivered`, the next MAIL on the same session must work."""
    applicants = ["a@gmail.example", "b@gmail.example"]
    fail_final_dot_once_for(monkeypatch, "b@gmail.example")
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await send_expecting_error(relay, applicants, REJECTION)  # a delivered, b deferred
        await relay.send(SENDER, applicants, REJECTION)  # b delivered now
        client = aiosmtplib.SMTP(hostname=relay.host, port=relay.port)
        await client.connect()
        # The same message once more (all copies delivered before), then another one on the same session.
        refused, reply = await client.sendmail(SENDER, applicants, REJECTION)
        assert refused == {} and "already delivered" in reply
        refused, reply = await client.sendmail(SENDER, ["c@gmail.example"], OFFER)
        await client.quit()
    assert refused == {} and reply.startswith("2")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [*applicants, "c@gmail.example"]


async def test_the_retry_check_is_asked_before_the_copy_is_signed(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8: the store's reader thread answers while the copy is signed, not after; still one check."""
    import mailrelay.signing as signing

    order: list[str] = []
    original_signature = signing.dkim_signature

    def signature(*args: Any, **kwargs: Any) -> bytes:
        order.append("sign")
        return original_signature(*args, **kwargs)

    monkeypatch.setattr(signing, "dkim_signature", signature)
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        store = relay.components.relay.store
        original_read = store.delivered_recipients

        def read(fingerprint: str, hashes: Any) -> Any:
            order.append("retry check")
            return original_read(fingerprint, hashes)

        monkeypatch.setattr(store, "delivered_recipients", read)
        refused, reply = await relay.send(SENDER, ["applicant@gmail.example"], OFFER)
        assert order == []  # not a rejection: nothing to check
        refused, reply = await relay.send(SENDER, ["applicant@gmail.example"], REJECTION)
    assert refused == {} and reply.startswith("2")
    assert order == ["retry check", "sign"]
    assert len(sink.messages) == 2 and event_count(relay) == 1


async def test_a_retry_check_left_behind_by_a_failed_plan_does_not_hold_up_the_original(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check starts before decoration; when decoration then fails open, the original goes at once, its
    answer not waited for (mail first)."""
    import mailrelay.stages.footer as footer_stage

    def broken(copy: object) -> object:
        raise RuntimeError("bug in the footer template")

    monkeypatch.setattr(footer_stage, "render", broken)
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        store = relay.components.relay.store
        asked: list[asyncio.Future[set[str]]] = []

        def read(fingerprint: str, hashes: Any) -> asyncio.Future[set[str]]:
            answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
            asked.append(answer)
            return answer  # never answered

        monkeypatch.setattr(store, "delivered_recipients", read)
        refused, reply = await relay.send(SENDER, ["applicant@gmail.example"], REJECTION)
    assert refused == {} and reply.startswith("2")
    assert len(asked) == 1 and not asked[0].done()
    assert [m.content for m in sink.messages] == [REJECTION]


async def test_an_abandoned_retry_check_is_not_reported_as_never_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gc

    answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
    StoreRead(frozenset(), set(), answer).abandon()
    answer.set_exception(RuntimeError("database gone"))
    await asyncio.sleep(0)
    del answer
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_message_is_fingerprinted_by_its_sender_and_bytes(
    start_relay, make_settings: SettingsFactory
) -> None:
    """The fingerprint finds a retried message in the store, across restarts and upgrades, so its formula
    stays: SHA-256 of the lower-cased envelope sender, a NUL and the content as relayed (issue 2 §5)."""
    import hashlib

    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        refused, reply = await relay.send(SENDER.upper(), ["applicant@gmail.example"], REJECTION)
        assert refused == {} and reply.startswith("2")
    with relay.components.store.sessions() as session:
        fingerprints = list(session.scalars(select(ReferralEvent.fingerprint)))
    assert fingerprints == [hashlib.sha256(SENDER.lower().encode() + b"\0" + REJECTION).hexdigest()]


async def test_a_transaction_timeout_while_the_content_is_checked_for_the_wire_closes_the_next_hop_connection(
    start_relay, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the timeout cancelled data() while a large message was checked in a thread, before
    the part that closes the client on failure; the relay dropped the connection, which stayed open with the
    next hop's transaction in it until the next hop timed it out."""
    assert len(LARGE_WITH_DOT_LINES) > transport.WIRE_CHECK_OFF_LOOP_BYTES
    gate = threading.Event()
    original = transport.wire_ready

    def slow_wire_ready(content: bytes) -> bytes:
        gate.wait(10)
        return original(content)

    monkeypatch.setattr(transport, "wire_ready", slow_wire_ready)
    try:
        async with RecordingSink() as sink:
            relay = await start_relay(make_settings(sink.port, timeout=1, transaction_timeout=1))
            error = await send_expecting_error(relay, ["a@gmail.example"], LARGE_WITH_DOT_LINES)
            assert isinstance(error, aiosmtplib.SMTPDataError) and error.code == 451
            assert await sink.wait_for_open_connections(0) == 0
            assert sink.messages == []
    finally:
        gate.set()


async def test_a_next_hop_that_dropped_the_connection_during_a_slow_upload_gets_the_message_anew(
    start_relay, make_settings: SettingsFactory
) -> None:
    """Found by review: the transaction opened at MAIL/RCPT was used for DATA without a look at whether the
    next hop had meanwhile closed the idle connection (its command timeout is shorter than a slow client's
    upload may take): the client got 451 although a new connection would have taken the message."""
    async with RecordingSink(timeout=1) as sink:
        relay = await start_relay(make_settings(sink.port))
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        try:
            await reader.readline()
            writer.write(
                b"EHLO client.test\r\nMAIL FROM:<recruit@acme.co.jp>\r\nRCPT TO:<a@gmail.example>\r\n"
            )
            writer.write(b"DATA\r\n")
            await writer.drain()
            while not (await reader.readline()).startswith(b"354"):
                pass
            assert sink.open_connections() == 1
            # The upload is slow: the next hop gives up on the idle connection before the final dot.
            assert await sink.wait_for_open_connections(0) == 0
            writer.write(OFFER + b".\r\n")
            await writer.drain()
            reply = await reader.readline()
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
    assert reply.startswith(b"250"), reply
    assert [(m.rcpt_tos, m.content) for m in sink.messages] == [(["a@gmail.example"], OFFER)]
