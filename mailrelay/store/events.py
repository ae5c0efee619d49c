"""Writes referral events and delivered-copy marks; reads the marks that make a retried message idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailrelay.store.models import Base, DeliveredCopy, ReferralEvent


@dataclass(frozen=True)
class CopyRecord:
    """One copy the next hop accepted. `referral` is set for decorated copies (they are referral events)."""

    fingerprint: str
    recipient_hash: str
    next_hop_reply: str
    referral: ReferralFields | None = None


@dataclass(frozen=True)
class ReferralFields:
    tenant_id: str
    token: str
    rule_id: str
    message_id: str | None
    recipient: str | None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (reports) work while the relay writes; synchronous=FULL so that a committed event
    # survives a power cut, as the ledger counts on it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class EventStore:
    """All database work runs on one worker thread, so the SMTP event loop never waits on a query."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailrelay-db")

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def delivered_recipients(self, fingerprint: str) -> set[str]:
        """Recipient hashes of copies of this message that an earlier attempt already delivered."""
        result: set[str] = await self._run(self._delivered_recipients, fingerprint)
        return result

    def _delivered_recipients(self, fingerprint: str) -> set[str]:
        with self.sessions() as session:
            marks = session.scalars(
                select(DeliveredCopy.recipient_hash).where(DeliveredCopy.fingerprint == fingerprint)
            )
            events = session.scalars(
                select(ReferralEvent.recipient_hash).where(ReferralEvent.fingerprint == fingerprint)
            )
            return set(marks) | set(events)

    async def record(self, records: Iterable[CopyRecord], *, mark_delivered: bool) -> int:
        """Store referral events (and, when the message was split, delivered marks); returns events added."""
        added: int = await self._run(self._record, list(records), mark_delivered)
        return added

    def write(self, records: Iterable[CopyRecord], *, mark_delivered: bool) -> int:
        """`record` for callers already off the event loop (the journal replay)."""
        return self._record(list(records), mark_delivered)

    def _record(self, records: list[CopyRecord], mark_delivered: bool) -> int:
        now = datetime.now(UTC)
        added = 0
        for record in records:
            with self.sessions() as session, session.begin():
                try:
                    with session.begin_nested():
                        self._add(session, record, now, mark_delivered)
                    if record.referral is not None:
                        added += 1
                except IntegrityError:
                    # The same copy was recorded by an earlier attempt of this message: count it once.
                    pass
        return added

    @staticmethod
    def _add(session: Session, record: CopyRecord, now: datetime, mark_delivered: bool) -> None:
        if record.referral is not None:
            r = record.referral
            session.add(
                ReferralEvent(
                    created_at=now,
                    tenant_id=r.tenant_id,
                    token=r.token,
                    rule_id=r.rule_id,
                    message_id=r.message_id,
                    recipient_hash=record.recipient_hash,
                    recipient=r.recipient,
                    fingerprint=record.fingerprint,
                    next_hop_reply=record.next_hop_reply,
                )
            )
        elif mark_delivered:
            session.add(
                DeliveredCopy(
                    created_at=now,
                    fingerprint=record.fingerprint,
                    recipient_hash=record.recipient_hash,
                    next_hop_reply=record.next_hop_reply,
                )
            )

    def count_events(self) -> int:
        with self.sessions() as session:
            return len(list(session.scalars(select(ReferralEvent.id))))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
