"""The local append-only journal of delivered copies that could not be written to the database yet."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from mailrelay.store import CopyRecord, EventStore, ReferralFields, SeenRejection

log = logging.getLogger("mailrelay.journal")


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One message's records that wait for the database: its delivered copies, whether the rejection is
    counted (the follow-up rate's denominator, issue 6) and when the copies were delivered."""

    records: list[CopyRecord]
    mark_delivered: bool
    seen: SeenRejection | None = None
    at: datetime | None = None  # None in lines written before it was kept: replayed as "now"


def _encode(entry: JournalEntry) -> bytes:
    line: dict[str, Any] = {
        "mark_delivered": entry.mark_delivered,
        "records": [dataclasses.asdict(r) for r in entry.records],
    }
    if entry.seen is not None:
        line["seen"] = dataclasses.asdict(entry.seen)
    if entry.at is not None:
        line["at"] = entry.at.isoformat()
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _decode(line: bytes) -> JournalEntry:
    entry: dict[str, Any] = json.loads(line)
    records = []
    for item in entry["records"]:
        referral = item.pop("referral")
        records.append(CopyRecord(**item, referral=ReferralFields(**referral) if referral else None))
    seen = entry.get("seen")
    at = entry.get("at")
    return JournalEntry(
        records,
        bool(entry["mark_delivered"]),
        SeenRejection(**seen) if seen else None,
        datetime.fromisoformat(at) if at else None,
    )


class EventJournal:
    """When the database is down, locked or failing over, a delivered copy's record is appended here and
    fsynced before the sender hears 250 (issue 5: 0 events lost); a background task writes the entries to the
    database when it is back. Writing twice is harmless: the store counts a copy once (unique keys)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._delivered: dict[str, set[str]] = {}  # fingerprint → recipient hashes, for retries meanwhile
        self.backlog = 0  # delivered copies waiting (the metric mailrelay_journal_backlog)
        self.rejections_waiting = 0  # rejections whose count waits, with or without copies
        for entry in self._entries():
            self._remember(entry)

    @property
    def waiting(self) -> bool:
        return bool(self.backlog or self.rejections_waiting)

    def _remember(self, entry: JournalEntry) -> None:
        for record in entry.records:
            self._delivered.setdefault(record.fingerprint, set()).add(record.recipient_hash)
            self.backlog += 1
        if entry.seen is not None:
            self.rejections_waiting += 1

    def _entries(self) -> list[JournalEntry]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries = []
        for line in data.splitlines():
            try:
                entries.append(_decode(line))
            except (ValueError, KeyError, TypeError):
                # A line cut by a crash mid-write was never fsynced, so its sender never heard 250.
                log.warning("skipping a torn journal line in %s", self.path)
        return entries

    def delivered(self, fingerprint: str) -> set[str]:
        return set(self._delivered.get(fingerprint, ()))

    def append(
        self,
        records: list[CopyRecord],
        mark_delivered: bool,
        seen: SeenRejection | None = None,
        at: datetime | None = None,
    ) -> None:
        entry = JournalEntry(records, mark_delivered, seen, at)
        line = _encode(entry)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._remember(entry)

    def replay(self, store: EventStore) -> int:
        """Write every journalled entry to the database; on success the journal is emptied. Returns the
        number of records written (0 when there was nothing to do); raises when the database still fails."""
        with self._lock:
            entries = self._entries()
            if not entries:
                return 0
            for entry in entries:
                store.write(entry.records, mark_delivered=entry.mark_delivered, seen=entry.seen, at=entry.at)
            # Everything is in the database now: start an empty journal (rename is atomic, RFC-style
            # queue managers do the same), so a crash here leaves either the old or the empty one.
            empty = self.path.with_suffix(".tmp")
            empty.write_bytes(b"")
            os.replace(empty, self.path)
            written = sum(len(entry.records) for entry in entries)
            self._delivered.clear()
            self.backlog = self.rejections_waiting = 0
            return written


async def replay_forever(
    journal: EventJournal,
    store: EventStore,
    interval: float = 5.0,
    on_success: Callable[[], None] | None = None,
) -> None:
    """Retry the journal every `interval` seconds while it is not empty; `on_success` after a replay."""
    while True:
        await asyncio.sleep(interval)
        if not journal.waiting:
            continue
        try:
            written = await asyncio.to_thread(journal.replay, store)
        except Exception as exc:
            log.warning(
                "database still unavailable, %d journalled record(s) wait: %s",
                journal.backlog,
                type(exc).__name__,
            )
        else:
            log.info("wrote %d journalled record(s) to the database", written)
            if on_success is not None:
                on_success()
