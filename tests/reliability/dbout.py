"""Part 7: the database goes away under load (research §5 F10): another process holds an exclusive lock on
the SQLite file; mail keeps flowing, records wait in the fsynced journal, the replay brings events back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

from bench.ports import free_port
from mailrelay.relay import Relay
from mailrelay.store.events import WRITE_LOCK_WAIT
from tests.reliability.common import (
    RelayProcess,
    Scale,
    Section,
    SinkProcess,
    workdir,
    write_config,
)
from tests.reliability.kill9 import referral_message_ids
from tests.reliability.load import LoadStats, make_jobs, run_load


def _hold_lock(database: Path, seconds: float) -> None:
    """What a stuck migration or backup tool does: BEGIN EXCLUSIVE; every other writer gets SQLITE_BUSY."""
    db = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        db.execute("ROLLBACK")
    finally:
        db.close()


async def run(scale: Scale, messages: int, section: Section) -> None:
    count = scale.db_messages
    sessions = min(20, scale.sessions)
    section.how = (
        f"{count:,} rejections (each to its own applicant) from {sessions} retrying sessions through a "
        f"`mailrelay serve` subprocess with SQLite. When a third are acknowledged, another process takes "
        f"`BEGIN EXCLUSIVE` on the database for {scale.db_outage:.0f} "
        "s, then lets go. After the load, the run "
        "waits for the relay's journal replay (every 5 s) "
        "and compares events with decorated copies delivered."
    )
    with workdir("reliability-dbout-") as base:
        sink_port, port = free_port(), free_port()
        relay = RelayProcess(
            write_config(base / "relay", port=port, next_hop_port=sink_port), port, base / "relay.log"
        )
        database = base / "relay" / "var" / "mailrelay.db"
        stats = LoadStats()
        async with SinkProcess(sink_port, base / "sink.tsv") as sink:
            await relay.start()
            load = asyncio.ensure_future(
                run_load("127.0.0.1", port, make_jobs("db", count, 1), sessions, stats)
            )
            while len(stats.acked) < count // 3 and not load.done():
                await asyncio.sleep(0.01)
            acked_before = len(stats.acked)
            outage_started = time.monotonic()
            await asyncio.to_thread(_hold_lock, database, scale.db_outage)
            acked_during = len(stats.acked) - acked_before
            failures_during = sum(stats.failures.values())
            await load
            decorated = {mid for mid, _r, dec in sink.deliveries() if dec}
            # The replay runs every 5 s: wait for it (bounded), then stop the relay.
            deadline = time.monotonic() + 20
            events = referral_message_ids(database)
            while len(set(events)) < len(decorated) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                events = referral_message_ids(database)
            waited = time.monotonic() - outage_started - scale.db_outage
            relay.stop()
            events = referral_message_ids(database)
            delivered = {mid for mid, _r, _d in sink.deliveries()}
        journalled = (base / "relay.log").read_text(encoding="utf-8", errors="replace").count("journalling")
    counted = Counter(events)
    lost = decorated - set(counted)
    doubled = sum(n - 1 for n in counted.values())
    section.figure(
        "referral events lost / doubled after the replay",
        f"{len(lost)} / {doubled} ({len(counted):,} events, {len(decorated):,} decorated copies)",
        "0 / 0",
        not lost and not doubled and set(counted) <= decorated,
    )
    section.figure(
        "mail acknowledged during the outage",
        f"{acked_during:,} ({journalled} transactions journalled)",
        "> 0 (mail keeps flowing)",
        acked_during > 0,
    )
    section.figure(
        "acknowledged but lost", len(set(stats.acked) - delivered), "0", set(stats.acked) <= delivered
    )
    section.detail += [
        "| | value |",
        "|---|---:|",
        f"| rejections acknowledged | {len(stats.acked):,} of {count:,} |",
        f"| acknowledged while the database was locked ({scale.db_outage:.0f} s) | {acked_during:,} |",
        f"| transactions whose records went to the journal | {journalled} |",
        f"| non-250 answers during the run (retried) | {failures_during} "
        f"({', '.join(f'{k} ×{v}' for k, v in stats.failures.items()) or '–'}) |",
        f"| seconds from the end of the outage to the last event in the database | {max(waited, 0):.1f} |",
        "| decorated copies delivered / events / lost / doubled | "
        f"{len(decorated):,} / {len(counted):,} / {len(lost)} / {doubled} |",
        "",
        f"While the lock is held, a write waits up to {WRITE_LOCK_WAIT:g} s for SQLite's write lock, then "
        "its records go to the fsynced journal and the sender gets the next hop's 250; for the next "
        f"{Relay.STORE_PAUSE_SECONDS:g} s the relay journals without asking the database. The replay "
        "writes the records once the lock is gone.",
    ]
