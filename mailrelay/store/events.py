"""Writes referral events (and their ledger lines) and delivered-copy marks; reads the marks that make a
retried message idempotent; the async door to the ledger, clicks, registrations and purge (issue 6)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailrelay.store import ledger, schema
from mailrelay.store import tracking as tracking_store
from mailrelay.store.models import DeliveredCopy, ReferralEvent, RejectionSeen

T = TypeVar("T")

# The same applicant rejected again by the same company within this time is one referral (issue 6).
DEFAULT_DEDUPE_WINDOW = timedelta(days=180)


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
    # Wait briefly for a lock, then let the relay journal the record: mail must keep flowing (issue 5).
    cursor.execute("PRAGMA busy_timeout=500")
    cursor.close()


class EventStore:
    """All database work runs on one worker thread, so the SMTP event loop never waits on a query."""

    def __init__(self, url: str, *, dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW) -> None:
        self.url = url
        self.dedupe_window = dedupe_window
        # A database that does not answer must fail fast, so the relay journals instead of stalling mail.
        connect_args = {"connect_timeout": 3} if url.startswith("postgresql") else {}
        self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailrelay-db")

    def create_schema(self) -> None:
        """Bring the schema to the latest migration (what `mailrelay db upgrade` does)."""
        schema.upgrade(self.engine)

    def check_schema(self) -> str:
        """The check at start: an empty database is created; a newer schema raises SchemaError; an older
        one is upgraded on SQLite (one relay owns the file) and refused on PostgreSQL (several relays)."""
        return schema.check_at_start(self.engine, upgrade_older=self.engine.dialect.name == "sqlite")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction (synchronously: for the CLI, tests and the worker thread)."""
        with self.sessions() as session, session.begin():
            return fn(session)

    async def run_transaction(self, fn: Callable[[Session], T]) -> T:
        """`transaction` on the store's worker thread, for code on the event loop (the HTTP endpoints)."""
        result: T = await self._run(self.transaction, fn)
        return result

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
        return len(await self.record_events(records, mark_delivered=mark_delivered))

    async def record_events(self, records: Iterable[CopyRecord], *, mark_delivered: bool) -> list[int]:
        """`record`, returning the ids of the referral events added (for the transaction's log line)."""
        ids: list[int] = await self._run(self._record, list(records), mark_delivered)
        return ids

    def write(self, records: Iterable[CopyRecord], *, mark_delivered: bool) -> int:
        """`record` for callers already off the event loop (the journal replay)."""
        return len(self._record(list(records), mark_delivered))

    def _record(self, records: list[CopyRecord], mark_delivered: bool) -> list[int]:
        now = datetime.now(UTC)
        ids: list[int] = []
        for record in records:
            with self.sessions() as session, session.begin():
                try:
                    with session.begin_nested():
                        event_id = self._add(session, record, now, mark_delivered)
                    if event_id is not None:
                        ids.append(event_id)
                except IntegrityError:
                    # The same copy was recorded by an earlier attempt of this message: count it once.
                    pass
        return ids

    def _add(self, session: Session, record: CopyRecord, now: datetime, mark_delivered: bool) -> int | None:
        if record.referral is not None:
            r = record.referral
            referral_event = ReferralEvent(
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
            session.add(referral_event)
            # A retry of the same copy fails here (unique fingerprint + recipient) and counts nothing.
            session.flush()
            ledger.count_referral(session, referral_event, self.dedupe_window)
            return referral_event.id
        if mark_delivered:
            session.add(
                DeliveredCopy(
                    created_at=now,
                    fingerprint=record.fingerprint,
                    recipient_hash=record.recipient_hash,
                    next_hop_reply=record.next_hop_reply,
                )
            )
        return None

    def count_events(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count(ReferralEvent.id))) or 0)

    async def record_rejection_seen(
        self, tenant_id: str, decorated: bool, *, fingerprint: str | None = None
    ) -> None:
        """Count one rejection mail of `tenant_id`, decorated or not (the follow-up rate's denominator).
        With the message fingerprint, a retried message counts once, as decorated if any attempt was."""
        await self._run(self.rejection_seen, tenant_id, decorated, fingerprint, datetime.now(UTC))

    def rejection_seen(self, tenant_id: str, decorated: bool, fingerprint: str | None, now: datetime) -> None:
        def write(session: Session) -> None:
            insert = ledger._insert(session)
            statement = insert(RejectionSeen).values(
                created_at=now, tenant_id=tenant_id, decorated=decorated, fingerprint=fingerprint
            )
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=["fingerprint"],
                    set_={"decorated": RejectionSeen.decorated | statement.excluded.decorated},
                )
            )

        self.transaction(write)

    async def click(
        self,
        token: str,
        *,
        method: str,
        ip: str | None,
        user_agent: str | None,
        scanner_reason: str | None,
        too_soon: timedelta,
    ) -> tracking_store.ClickResult | None:
        now = datetime.now(UTC)
        return await self.run_transaction(
            lambda s: tracking_store.record_click(
                s,
                token,
                method=method,
                ip=ip,
                user_agent=user_agent,
                now=now,
                scanner_reason=scanner_reason,
                too_soon=too_soon,
            )
        )

    async def register(self, token: str, webhook_id: str) -> tracking_store.RegistrationResult:
        now = datetime.now(UTC)
        return await self.run_transaction(
            lambda s: tracking_store.record_registration(s, token, webhook_id, now)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
