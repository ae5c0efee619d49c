"""Part 1: kill -9 under load (research §5 F1): nothing acknowledged is lost, duplicates stay within the
transactions in flight at each kill, and referral events match the decorated copies delivered."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

from bench.ports import free_port
from tests.reliability.common import (
    RelayProcess,
    Scale,
    Section,
    SinkProcess,
    workdir,
    write_config,
)
from tests.reliability.load import LoadStats, make_jobs, run_load

REJECTION_EVERY = 4  # one message in four is a rejection: decorated, DKIM-signed, recorded


def referral_message_ids(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        # The event keeps the header's value, angle brackets included; the sink logs the bare id.
        return [
            (row[0] or "").strip().strip("<>") for row in db.execute("SELECT message_id FROM referral_events")
        ]


async def run(scale: Scale, messages: int, section: Section) -> None:
    section.how = (
        f"{messages:,} messages (one in {REJECTION_EVERY} a "
        "rejection to a unique applicant, the rest ordinary "
        f"mail), each with its own Message-ID, from {scale.sessions} "
        "concurrent aiosmtplib sessions that retry "
        f"anything not answered 250 (jittered backoff 25 ms–1 s), through a `mailrelay serve` subprocess to "
        f"an aiosmtpd sink that logs each Message-ID before its 250. The relay is killed with SIGKILL "
        f"{scale.kills}× (at even shares of the acknowledged count) and started again each time. SQLite "
        f"event store."
    )
    with workdir("reliability-kill9-") as base:
        sink_port, relay_port = free_port(), free_port()
        config = write_config(base / "relay", port=relay_port, next_hop_port=sink_port)
        relay = RelayProcess(config, relay_port, base / "relay.log")
        jobs = make_jobs("k9", messages, REJECTION_EVERY)
        stats = LoadStats()
        kills: list[tuple[int, int, float]] = []  # (acked at the kill, sessions mid-transaction, restart s)
        async with SinkProcess(sink_port, base / "sink.tsv") as sink:
            await relay.start()
            load = asyncio.ensure_future(run_load("127.0.0.1", relay_port, jobs, scale.sessions, stats))
            for k in range(1, scale.kills + 1):
                threshold = messages * k // (scale.kills + 1)
                while len(stats.acked) < threshold and not load.done():
                    await asyncio.sleep(0.005)
                if load.done():
                    break
                # No await between counting and the kill: the count is what the kill interrupted.
                in_flight = len(stats.in_transaction)
                acked_now = len(stats.acked)
                relay.kill()
                restart = await relay.start()
                kills.append((acked_now, in_flight, restart))
            await load
            relay.stop()
            deliveries = sink.deliveries()
        events = referral_message_ids(base / "relay" / "var" / "mailrelay.db")

    copies = Counter(message_id for message_id, _rcpt, _dec in deliveries)
    delivered = set(copies)
    acked = set(stats.acked)
    lost = acked - delivered
    never_acked = delivered - acked
    duplicates = sum(n - 1 for n in copies.values())
    in_flight_total = sum(k[1] for k in kills)
    decorated = {message_id for message_id, _rcpt, dec in deliveries if dec}
    rejections = {job.message_id for job in jobs if job.kind == "rejection"}
    event_ids = Counter(events)
    events_lost = decorated - set(event_ids)
    events_doubled = sum(n - 1 for n in event_ids.values())
    phantom = set(event_ids) - decorated
    seconds = stats.finished - stats.started

    section.figure(
        "messages acknowledged (250)", f"{len(acked):,} of {messages:,}", "all", len(acked) == messages
    )
    section.figure("acknowledged but lost", len(lost), "0", not lost)
    section.figure(
        "duplicates (a Message-ID delivered twice)",
        f"{duplicates} (in flight at the kills: {in_flight_total})",
        "≤ in flight at the kills",
        duplicates <= in_flight_total,
    )
    section.figure("5xx replies to the sender (would bounce)", len(stats.permanent), "0", not stats.permanent)
    section.figure(
        "referral events lost / doubled",
        f"{len(events_lost)} / {events_doubled} ({len(event_ids):,} events, {len(decorated):,} decorated)",
        "0 / 0",
        not events_lost and not events_doubled and not phantom,
    )
    section.detail += [
        "| figure | value |",
        "|---|---:|",
        f"| messages sent (unique Message-IDs) | {messages:,} |",
        f"| acknowledged (250 to the sender) | {len(acked):,} |",
        f"| delivered to the next hop (unique) | {len(delivered):,} |",
        f"| **acknowledged but lost** | **{len(lost)}** |",
        f"| delivered but never acknowledged | {len(never_acked)} |",
        f"| duplicates at the next hop | {duplicates} |",
        f"| sessions mid-transaction at the kills | {', '.join(str(k[1]) for k in kills) or '–'} |",
        f"| attempts / retries | {stats.attempts:,} / {stats.retries:,} |",
        "| what the retried attempts got | "
        f"{', '.join(f'{k} ×{v}' for k, v in stats.failures.most_common()) or '–'} |",
        "| rejections sent / decorated copies delivered "
        f"(unique) | {len(rejections):,} / {len(decorated):,} |",
        "| referral events in the database / distinct Message-IDs "
        f"| {sum(event_ids.values()):,} / {len(event_ids):,} |",
        "| events lost / doubled / without a delivered copy | "
        f"{len(events_lost)} / {events_doubled} / {len(phantom)} |",
        f"| relay restarts: seconds until listening | {', '.join(f'{k[2]:.1f}' for k in kills) or '–'} |",
        f"| acknowledged when each kill hit | {', '.join(f'{k[0]:,}' for k in kills) or '–'} |",
        f"| wall time / throughput including restarts | {seconds:.0f} "
        f"s / {len(acked) / max(seconds, 1e-9):.0f} msg/s |",
    ]
    if lost:
        section.detail.append(f"\nLost Message-IDs (first 10): {', '.join(sorted(lost)[:10])}")
    if stats.permanent:
        section.detail.append(f"\n5xx replies (first 5): {'; '.join(stats.permanent[:5])}")
    section.detail.append(
        "\nA duplicate is the RFC 1047 case: the next hop took the message, then the relay died before "
        "its 250 reached the sender, so the sender sent it again. A second *decorated* copy of the same "
        "message carries a fresh link but adds no referral event: the event is keyed by the message "
        "fingerprint and the applicant (checked above: events doubled)."
    )
