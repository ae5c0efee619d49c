"""Clicks and registrations in the store: a token resolves to its referral event, or to nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailrelay.store.ledger import _aware
from mailrelay.store.models import Click, ReferralEvent, Registration


@dataclass(frozen=True)
class ClickResult:
    tenant_id: str
    token: str
    scanner: bool
    reason: str | None


def _event(session: Session, token: str) -> ReferralEvent | None:
    if not token or len(token) > 64:
        return None
    return session.scalars(
        select(ReferralEvent).where(ReferralEvent.token == token, ReferralEvent.purged_at.is_(None))
    ).first()


def record_click(
    session: Session,
    token: str,
    *,
    method: str,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
    scanner_reason: str | None,
    too_soon: timedelta,
) -> ClickResult | None:
    """Record a request for the token's link; None for an unknown token (nothing recorded). A click within
    `too_soon` of delivery is flagged: no person opens a mail and clicks that fast, link scanners do."""
    event = _event(session, token)
    if event is None:
        return None
    reason = scanner_reason
    if reason is None and now - _aware(event.created_at) < too_soon:
        reason = "too_soon"
    session.add(
        Click(
            created_at=now,
            tenant_id=event.tenant_id,
            referral_event_id=event.id,
            method=method[:8],
            scanner=reason is not None,
            scanner_reason=reason,
            ip=ip[:64] if ip else None,
            user_agent=user_agent[:512] if user_agent else None,
        )
    )
    return ClickResult(event.tenant_id, event.token, reason is not None, reason)


@dataclass(frozen=True)
class RegistrationResult:
    status: str  # "recorded", "duplicate" or "unknown_token"
    tenant_id: str | None = None


def record_registration(session: Session, token: str, webhook_id: str, now: datetime) -> RegistrationResult:
    """Idempotent: the same webhook id, or a second registration for the same referral, changes nothing."""
    if session.scalars(select(Registration.id).where(Registration.webhook_id == webhook_id)).first():
        return RegistrationResult("duplicate")
    event = _event(session, token)
    if event is None:
        return RegistrationResult("unknown_token")
    try:
        with session.begin_nested():
            session.add(
                Registration(
                    created_at=now,
                    tenant_id=event.tenant_id,
                    referral_event_id=event.id,
                    webhook_id=webhook_id,
                )
            )
    except IntegrityError:
        # Another relay took the same delivery, or this referral registered before under another id.
        return RegistrationResult("duplicate", event.tenant_id)
    return RegistrationResult("recorded", event.tenant_id)
