"""Micro-benchmarks of the stages, in this process: detection, parse+decorate, DKIM signing, event recording,
and the whole planning step (what runs in the worker thread per message)."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.messages import SENDER, wire_bytes


@dataclass
class Micro:
    name: str
    per_op_ms: float = 0.0  # median over batches
    spread_ms: tuple[float, float] = (0.0, 0.0)  # min and max of the batch medians
    note: str = ""


def _time(
    fn: Callable[[], object], budget: float, batches: int = 5, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float, float]:
    """ms per call: median, min and max over `batches` batches, each about budget/batches seconds long."""
    fn()  # warm: caches, lazy imports
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-6)
    per_batch = max(1, int(budget / batches / once))
    results = []
    for _ in range(batches):
        started = clock()
        for _ in range(per_batch):
            fn()
        results.append((clock() - started) / per_batch * 1000)
    return statistics.median(results), min(results), max(results)


def _run(
    name: str,
    fn: Callable[[], Callable[[], object]],
    budget: float,
    per: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> Micro:
    """`per`: how many operations one call does (the figures are per operation); `clock`: wall time, or
    time.process_time for the CPU of all this process's threads."""
    try:
        call = fn()
        median, low, high = (ms / per for ms in _time(call, budget, clock=clock))
    except NotImplementedError:
        return Micro(name, note="not available: the module is still a stub")
    except Exception as exc:
        traceback.print_exc()
        return Micro(name, note=f"failed: {type(exc).__name__}: {exc}")
    return Micro(name, median, (low, high))


def run_all(
    config: Path, messages: dict[tuple[str, bool], Path], workdir: Path, budget: float
) -> list[Micro]:
    from mailrelay.app import load_ruleset
    from mailrelay.config import load_settings
    from mailrelay.detection import DetectionInput
    from mailrelay.message import Footer, Limits, parse

    settings = load_settings(config)
    tenant = settings.tenants[0]
    raw20 = wire_bytes(messages["multipart-ja-20k", True])[:-3]
    footer = Footer(
        text="\n――――\nExampleより転職支援サービスのご案内です。\nhttps://careerrelay.jp/r/x\n",
        html='<p>ご案内 <a href="https://careerrelay.jp/r/x">https://careerrelay.jp/r/x</a></p>',
    )
    out: list[Micro] = []
    rules = load_ruleset(settings)
    # What every message costs before anything is decided, for each message of the throughput runs: the
    # bounds in RESULTS.md are built from these (bench/report.py _MICRO).
    for shape in ("plain-5k", "multipart-ja-20k", "attachment-50k"):
        raw = wire_bytes(messages[shape, True])[:-3]

        def extract(raw: bytes = raw) -> Callable[[], object]:
            return lambda: parse(raw, Limits()).text()

        out.append(_run(f"parse + text extraction, {shape}", extract, budget))

        for rejection in (False, True):

            def detection(
                raw: bytes = wire_bytes(messages[shape, rejection])[:-3], expected: bool = rejection
            ) -> Callable[[], object]:
                parsed = parse(raw, Limits())
                text = parsed.text()
                item = DetectionInput(
                    text.subject, text.plain, text.html, parsed.header_values, SENDER, tenant.id
                )
                if rules.evaluate(item).rejection is not expected:
                    raise RuntimeError("the rules misjudge a bench message")
                return lambda: rules.evaluate(item)

            kind = "rejection" if rejection else "non-matching"
            out.append(
                _run(f"detection: rules over {shape}, {kind} (text already extracted)", detection, budget)
            )

    for shape in ("plain-5k", "multipart-ja-20k", "attachment-50k"):
        raw = wire_bytes(messages[shape, True])[:-3]

        def decorate(raw: bytes = raw) -> Callable[[], object]:
            return lambda: parse(raw, Limits()).decorate(footer)

        out.append(_run(f"decoration: parse + decorate, {shape}", decorate, budget))

    # The whole signature of each message (dkimpy's canonicalisation and body hash, OpenSSL's RSA): every
    # rejection copy needs one, so the bounds count it (report.py _MICRO).
    for shape in ("plain-5k", "multipart-ja-20k", "attachment-50k"):

        def signing(raw: bytes = wire_bytes(messages[shape, True])[:-3]) -> Callable[[], object]:
            from mailrelay.signing import DkimSigner

            signer = DkimSigner(settings.tenants, str(config))
            return lambda: signer.sign(raw, tenant, "example.co.jp")

        out.append(_run(f"DKIM signing: RSA-2048, {shape}", signing, budget))

    def rsa_alone() -> Callable[[], object]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        digest = bytes(32)
        return lambda: key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    # The one step of signing no implementation can skip: what DKIM costs at the very least.
    out.append(_run("RSA-2048 signature alone (OpenSSL via cryptography)", rsa_alone, budget))

    def plan() -> Callable[[], object]:
        from mailrelay.cli import _offline_relay
        from mailrelay.relay import Transaction

        relay = _offline_relay(settings)

        def once() -> object:
            txn = Transaction("BENCH", SENDER, [], ["applicant@gmail.example"], raw20)
            result = relay.plan(txn, lambda _reason: None)
            if result.decision != "decorated":
                raise RuntimeError(f"not decorated: {result.decision}")
            return result

        return once

    out.append(_run("whole plan (parse → detect → decorate → sign), 20 KB, 1 applicant", plan, budget))

    def tls_context() -> Callable[[], object]:
        import ssl

        return ssl.create_default_context

    # What one per next-hop connection would cost: SmtpNextHop builds its context once, and none with
    # starttls = "off" (it once built one per connection).
    out.append(_run("ssl.create_default_context() (loads the system CA bundle)", tls_context, budget))

    def record() -> Callable[[], object]:
        from mailrelay.store import CopyRecord, EventStore, ReferralFields

        db = workdir / "micro-events.db"
        store = EventStore(f"sqlite:///{db}")
        store.create_schema()
        loop = asyncio.new_event_loop()

        def once() -> object:
            token = secrets.token_urlsafe(16)
            fields = ReferralFields("example", token, "ja-rejection", f"<{token}@bench>", None)
            records = [CopyRecord(secrets.token_hex(32), secrets.token_hex(32), "250 2.0.0 Ok", fields)]
            return loop.run_until_complete(store.record(records, mark_delivered=False))

        return once

    out.append(_run("event recording: EventStore.record, SQLite (WAL, synchronous=FULL)", record, budget))

    def record_together() -> Callable[[], object]:
        from mailrelay.store import CopyRecord, EventStore, ReferralFields, SeenRejection

        db = workdir / "micro-events-group.db"
        store = EventStore(f"sqlite:///{db}")
        store.create_schema()
        loop = asyncio.new_event_loop()

        async def message() -> object:
            # What the relay asks of the store for one decorated message: the retry check, then the write.
            token, fingerprint, applicant = (
                secrets.token_urlsafe(16),
                secrets.token_hex(32),
                secrets.token_hex(32),
            )
            await store.delivered_recipients(fingerprint, [applicant])
            fields = ReferralFields("example", token, "ja-rejection", f"<{token}@bench>", None)
            seen = SeenRejection("example", True, fingerprint)
            records = [CopyRecord(fingerprint, applicant, "250 2.0.0 Ok", fields)]
            return await store.record_events(records, mark_delivered=False, seen=seen)

        async def ten() -> object:
            return await asyncio.gather(*(message() for _ in range(10)))

        return lambda: loop.run_until_complete(ten())

    out.append(
        _run(
            "event store CPU per message, 10 messages at once (retry check + write, group commit)",
            record_together,
            budget,
            per=10,
            clock=time.process_time,
        )
    )
    # The same, on the event loop's thread alone (this one: run_until_complete runs the loop here): the
    # retry check's read, which SQLite answers on the loop, and handing each write to the writer thread
    # and taking its result back. The relay's store threads' CPU, which the run measures, leaves this out.
    # Less what gathering ten coroutines costs the loop by itself: the relay's sessions are tasks already.
    on_loop = _run(
        "event store CPU per message on the event loop, 10 messages at once (retry check's read, "
        "handing the write over and back)",
        record_together,
        budget,
        per=10,
        clock=time.thread_time,
    )
    harness = _run("gathering ten coroutines", _gather_ten, budget / 4, per=10, clock=time.thread_time)
    if not on_loop.note and not harness.note:
        low, high = on_loop.spread_ms
        less = harness.per_op_ms
        on_loop = Micro(on_loop.name, on_loop.per_op_ms - less, (low - less, high - less))
    out.append(on_loop)
    return out


def _gather_ten() -> Callable[[], object]:
    loop = asyncio.new_event_loop()

    async def nothing() -> None:
        return None

    async def ten() -> object:
        return await asyncio.gather(*(nothing() for _ in range(10)))

    return lambda: loop.run_until_complete(ten())
