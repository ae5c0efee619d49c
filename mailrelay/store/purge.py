"""Retention (APPI and GDPR): past the retention time, event details lose everything that could point at
a person, while every ledger line, and so every total and balance, stays as it was (issue 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CursorResult, Executable, String, cast, delete, literal, update
from sqlalchemy.orm import Session

from mailrelay.store.models import Click, DeliveredCopy, ReferralApplicant, ReferralEvent, RejectionSeen


@dataclass(frozen=True)
class PurgeResult:
    events: int
    clicks: int
    delivered_marks: int
    applicants: int
    rejections: int


def purge(session: Session, cutoff: datetime, now: datetime) -> PurgeResult:
    """Pseudonymise what is older than `cutoff`. A purged referral event keeps its id, tenant, rule and
    time (ledger lines point at it); its token, recipient hash, address, Message-ID, fingerprint and reply
    are replaced, so its link stops working and it can no longer be tied to an applicant."""

    def run(statement: Executable) -> int:
        result = session.execute(statement.execution_options(synchronize_session=False))
        assert isinstance(result, CursorResult)
        return result.rowcount

    placeholder = literal("purged-") + cast(ReferralEvent.id, String(64))
    events = run(
        update(ReferralEvent)
        .where(ReferralEvent.created_at < cutoff, ReferralEvent.purged_at.is_(None))
        .values(
            token=placeholder,
            recipient_hash=placeholder,
            fingerprint=placeholder,
            recipient=None,
            message_id=None,
            next_hop_reply="",
            purged_at=now,
        )
    )
    clicks = run(
        update(Click)
        .where(Click.created_at < cutoff, (Click.ip.is_not(None)) | (Click.user_agent.is_not(None)))
        .values(ip=None, user_agent=None)
    )
    marks = run(delete(DeliveredCopy).where(DeliveredCopy.created_at < cutoff))
    # Retention is at least the dedupe window (config.py checks it), so these no longer decide anything.
    applicants = run(delete(ReferralApplicant).where(ReferralApplicant.counted_at < cutoff))
    rejections = run(
        update(RejectionSeen)
        .where(RejectionSeen.created_at < cutoff, RejectionSeen.fingerprint.is_not(None))
        .values(fingerprint=None)
    )
    return PurgeResult(events, clicks, marks, applicants, rejections)
