"""The numbers of the report, computed from the ledger and the event tables (UTC months)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailrelay.store.ledger import DEFAULT_RATIO, _aware, slots_earned
from mailrelay.store.models import Click, LedgerEntry, Registration, RejectionSeen, Tenant


@dataclass
class MonthRow:
    month: str  # YYYY-MM
    rejections_seen: int | None = None  # None: the relay did not count rejection mails then
    rejections_linked: int = 0
    referred: int = 0
    slots_earned: int = 0
    slots_used: int = 0
    slots_left: int = 0
    clicks_scanners: int = 0
    registrations: int = 0
    # The referral events (links) a person clicked: each counted once in the month, and once in the total.
    clicked: set[int] = field(default_factory=set, repr=False)

    @property
    def clicks_people(self) -> int:
        return len(self.clicked)

    @property
    def registration_rate(self) -> float | None:
        return self.registrations / self.referred if self.referred > 0 else None

    @property
    def follow_up_rate(self) -> float | None:
        return self.rejections_linked / self.rejections_seen if self.rejections_seen else None

    def as_dict(self) -> dict[str, object]:
        return {
            "month": self.month,
            "rejections_seen": self.rejections_seen,
            "applicants_referred": self.referred,
            "slots_earned": self.slots_earned,
            "slots_used": self.slots_used,
            "slots_left": self.slots_left,
            "clicks_people": self.clicks_people,
            "clicks_scanners": self.clicks_scanners,
            "registrations": self.registrations,
            "registration_rate": _round(self.registration_rate),
            "follow_up_rate": _round(self.follow_up_rate),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class TenantReport:
    tenant_id: str
    name: str
    ratio: int
    months: list[MonthRow] = field(default_factory=list)

    def total(self) -> MonthRow:
        t = MonthRow("total")
        seen = [m.rejections_seen for m in self.months if m.rejections_seen is not None]
        t.rejections_seen = sum(seen) if seen else None
        for m in self.months:
            t.rejections_linked += m.rejections_linked
            t.referred += m.referred
            t.slots_earned += m.slots_earned
            t.slots_used += m.slots_used
            # Distinct over the period: a person who clicked in two months is one (the months' counts
            # added up made them two). The other columns add up: a referral is counted each time it is
            # made, a registration once per referral event (unique), a rejection once per fingerprint.
            t.clicked |= m.clicked
            t.clicks_scanners += m.clicks_scanners
            t.registrations += m.registrations
        t.slots_left = self.months[-1].slots_left if self.months else 0
        return t


def _month(moment: datetime) -> str:
    return _aware(moment).astimezone(UTC).strftime("%Y-%m")


def _months(start: date, end: date) -> list[str]:
    out = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def build_report(
    session: Session,
    tenants: Mapping[str, tuple[str, int]],
    *,
    only: str | None = None,
    start: date | None = None,
    end: date | None = None,
) -> list[TenantReport]:
    """`tenants`: id → (name, ratio) from the config; tenants only the database knows use the default
    ratio. `start` and `end` are inclusive days (UTC); without them, from the first activity to today."""
    known = dict(tenants)
    for tenant in session.scalars(select(Tenant)):
        known.setdefault(tenant.id, (tenant.name, DEFAULT_RATIO))
    for tenant_id in session.scalars(select(LedgerEntry.tenant_id).distinct()):
        known.setdefault(tenant_id, (tenant_id, DEFAULT_RATIO))
    ids = [only] if only is not None else sorted(known)
    reports = []
    for tenant_id in ids:
        name, ratio = known.get(tenant_id, (tenant_id, DEFAULT_RATIO))
        reports.append(_tenant(session, tenant_id, name, ratio, start, end))
    return reports


def _in(moment: datetime, start: date | None, end: date | None) -> bool:
    day = _aware(moment).astimezone(UTC).date()
    return (start is None or day >= start) and (end is None or day <= end)


def _tenant(
    session: Session, tenant_id: str, name: str, ratio: int, start: date | None, end: date | None
) -> TenantReport:
    ledger = list(
        session.scalars(
            # In the order the referrals were made: a journalled one is written after later live ones.
            select(LedgerEntry)
            .where(LedgerEntry.tenant_id == tenant_id)
            .order_by(LedgerEntry.created_at, LedgerEntry.id)
        )
    )
    seen = list(session.scalars(select(RejectionSeen).where(RejectionSeen.tenant_id == tenant_id)))
    clicks = list(session.scalars(select(Click).where(Click.tenant_id == tenant_id)))
    registrations = list(session.scalars(select(Registration).where(Registration.tenant_id == tenant_id)))
    moments: Iterable[datetime] = [
        *(e.created_at for e in ledger),
        *(s.created_at for s in seen),
        *(c.created_at for c in clicks),
        *(r.created_at for r in registrations),
    ]
    days = [_aware(m).astimezone(UTC).date() for m in moments]
    first = start or (min(days) if days else datetime.now(UTC).date())
    last = end or max([datetime.now(UTC).date(), *days])
    rows = {month: MonthRow(month) for month in _months(first, last)}

    # A slot is earned by the line that takes floor(referrals to date / ratio) up, in that line's month, so
    # the monthly figures add up to the balance (fractions of a slot carry over), and a period starting
    # within a month does not count the slots earned in it before its first day.
    referrals = adjusted = used = 0
    earned_before = 0
    by_month: dict[str, list[LedgerEntry]] = defaultdict(list)
    for e in ledger:
        by_month[_month(e.created_at)].append(e)
    for month in _months(min(first, *(d for d in days)) if days else first, last):
        for e in by_month.get(month, []):
            if end is not None and _aware(e.created_at).astimezone(UTC).date() > end:
                continue
            referrals += e.referrals
            adjusted += e.slots_adjusted
            used += e.slots_used
            earned_now = slots_earned(referrals, ratio)
            if month in rows and _in(e.created_at, start, end):
                row = rows[month]
                row.referred += e.referrals
                row.slots_used += e.slots_used
                row.slots_earned += e.slots_adjusted + earned_now - earned_before
            earned_before = earned_now
        if month in rows:
            rows[month].slots_left = earned_before + adjusted - used

    for s in seen:
        if _in(s.created_at, start, end) and (seen_row := rows.get(_month(s.created_at))) is not None:
            seen_row.rejections_seen = (seen_row.rejections_seen or 0) + 1
            seen_row.rejections_linked += int(s.decorated)
    for c in clicks:
        if _in(c.created_at, start, end) and (click_row := rows.get(_month(c.created_at))) is not None:
            if c.scanner:
                click_row.clicks_scanners += 1
            else:
                click_row.clicked.add(c.referral_event_id)
    for r in registrations:
        if _in(r.created_at, start, end) and (reg_row := rows.get(_month(r.created_at))) is not None:
            reg_row.registrations += 1
    return TenantReport(tenant_id, name, ratio, list(rows.values()))
