"""The referral ledger: which referral events count, slot redemptions and corrections, and balances that
are sums of ledger lines (issue 6). Every function here runs inside a caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailrelay.store import driver as driver_sql
from mailrelay.store.driver import CursorHolder, Driver
from mailrelay.store.models import LedgerEntry, Tenant

DEFAULT_RATIO = 10


class LedgerError(Exception):
    """A redemption or correction the ledger refuses (no slot left, unknown tenant, empty correction)."""


def _insert(session: Session) -> type[postgresql.Insert] | type[sqlite.Insert]:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert  # type: ignore[return-value]


def ensure_tenant(session: Session, tenant_id: str, name: str | None = None) -> None:
    insert = _insert(session)
    session.execute(
        insert(Tenant)
        .values(id=tenant_id, name=name or tenant_id, lock_seq=0)
        .on_conflict_do_nothing(index_elements=["id"])
    )


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise redemptions of one tenant across relays: an UPDATE holds the row lock (PostgreSQL) or the
    database write lock (SQLite) until commit, so two redemptions never both spend the last slot."""
    ensure_tenant(session, tenant_id)
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(lock_seq=Tenant.lock_seq + 1))


def count_referral(
    session: CursorHolder,
    *,
    tenant_id: str,
    recipient_hash: str,
    event_id: int,
    created_at: datetime,
    window: timedelta,
) -> bool:
    """Write the ledger line for a new referral event, unless the same applicant already counted for this
    tenant less than `window` ago. Exact under concurrency: the first relay to insert the applicant row
    wins; any other waits on that row (ON CONFLICT waits for the inserting transaction, FOR UPDATE for an
    updating one) and then sees the committed time. Driver statements: this runs for every referral."""
    driver = Driver.of(session)
    cursor = driver.cursor(session)
    applicant = {"tenant_id": tenant_id, "recipient_hash": recipient_hash}
    at = driver.bind_datetime(created_at)
    inserted = driver.execute(cursor, driver_sql.INSERT_APPLICANT, {**applicant, "counted_at": at}).fetchone()
    if inserted is None:
        row = driver.execute(cursor, driver_sql.COUNTED_AT[driver.dialect], applicant).fetchone()
        if _aware(created_at) - _aware(driver.read_datetime(row[0])) < window:
            return False
        driver.execute(cursor, driver_sql.RECOUNT, {**applicant, "counted_at": at})
    line = {"tenant_id": tenant_id, "created_at": at, "referral_event_id": event_id}
    driver.execute(cursor, driver_sql.INSERT_LEDGER_REFERRAL, line)
    return True


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the store writes is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Balance:
    tenant_id: str
    ratio: int
    referrals: int
    earned: int
    adjusted: int
    used: int

    @property
    def left(self) -> int:
        return self.earned + self.adjusted - self.used


def slots_earned(referrals: int, ratio: int) -> int:
    return max(referrals, 0) // ratio


def balance(session: Session, tenant_id: str, ratio: int, until: datetime | None = None) -> Balance:
    query = select(
        func.coalesce(func.sum(LedgerEntry.referrals), 0),
        func.coalesce(func.sum(LedgerEntry.slots_adjusted), 0),
        func.coalesce(func.sum(LedgerEntry.slots_used), 0),
    ).where(LedgerEntry.tenant_id == tenant_id)
    if until is not None:
        query = query.where(LedgerEntry.created_at < until)
    referrals, adjusted, used = session.execute(query).one()
    return Balance(
        tenant_id, ratio, int(referrals), slots_earned(int(referrals), ratio), int(adjusted), int(used)
    )


def redeem(session: Session, tenant_id: str, ratio: int, by: str, reason: str, now: datetime) -> LedgerEntry:
    if not by.strip() or not reason.strip():
        raise LedgerError("a redemption needs who (--by) and why (--reason)")
    lock_tenant(session, tenant_id)
    if balance(session, tenant_id, ratio).left < 1:
        raise LedgerError(f"tenant {tenant_id!r} has no free slot left")
    entry = LedgerEntry(
        created_at=now,
        tenant_id=tenant_id,
        kind="redeem",
        referrals=0,
        slots_used=1,
        slots_adjusted=0,
        actor=by,
        reason=reason,
    )
    session.add(entry)
    session.flush()
    return entry


def correct(
    session: Session,
    tenant_id: str,
    *,
    referrals: int,
    slots_adjusted: int,
    slots_used: int,
    by: str,
    reason: str,
    now: datetime,
) -> LedgerEntry:
    if not by.strip() or not reason.strip():
        raise LedgerError("a correction needs who (--by) and why (--reason)")
    if referrals == slots_adjusted == slots_used == 0:
        raise LedgerError("a correction must change something (--referrals, --slots or --used)")
    lock_tenant(session, tenant_id)
    entry = LedgerEntry(
        created_at=now,
        tenant_id=tenant_id,
        kind="correction",
        referrals=referrals,
        slots_used=slots_used,
        slots_adjusted=slots_adjusted,
        actor=by,
        reason=reason,
    )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class LedgerLine:
    """One ledger entry with the running totals after it: how a balance is explained line by line."""

    entry_id: int
    created_at: datetime
    kind: str
    referrals: int
    slots_used: int
    slots_adjusted: int
    referral_event_id: int | None
    actor: str | None
    reason: str | None
    total_referrals: int
    total_earned: int
    total_used: int
    balance: int


def lines(session: Session, tenant_id: str, ratio: int) -> Sequence[LedgerLine]:
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id).order_by(LedgerEntry.id)
    )
    out: list[LedgerLine] = []
    referrals = used = adjusted = 0
    for e in entries:
        referrals += e.referrals
        used += e.slots_used
        adjusted += e.slots_adjusted
        earned = slots_earned(referrals, ratio)
        out.append(
            LedgerLine(
                e.id,
                _aware(e.created_at),
                e.kind,
                e.referrals,
                e.slots_used,
                e.slots_adjusted,
                e.referral_event_id,
                e.actor,
                e.reason,
                referrals,
                earned + adjusted,
                used,
                earned + adjusted - used,
            )
        )
    return out
