"""SQLAlchemy 2 tables of the referral-event store and the referral ledger (issue 6).

The schema itself is owned by the Alembic migrations in mailrelay/migrations: a change here needs a new
revision there (tests/test_store_migrations.py compares the two)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ReferralEvent(Base):
    """One decorated rejection copy accepted by the next hop. Whether it counts as a referral is decided
    once, when it is recorded, and written to the ledger (a repeat within the window adds no line)."""

    __tablename__ = "referral_events"
    __table_args__ = (
        # A retry of the same message to the same applicant never counts twice (issue 2 §5, issue 6).
        UniqueConstraint("fingerprint", "recipient_hash", name="uq_referral_events_copy"),
        Index("ix_referral_events_tenant_time", "tenant_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    rule_id: Mapped[str] = mapped_column(String(128))
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True)
    recipient_hash: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str | None] = mapped_column(
        String(320), nullable=True
    )  # only if store_recipient = "clear"
    fingerprint: Mapped[str] = mapped_column(String(64))
    next_hop_reply: Mapped[str] = mapped_column(Text)
    # Set by `mailrelay purge`: the row keeps tenant and time (the ledger points at it), nothing personal.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeliveredCopy(Base):
    """A copy the next hop accepted while another copy of the same message failed: the sender retries the
    whole message, and this row keeps the retry from sending the delivered copy twice (issue 2 §5)."""

    __tablename__ = "delivered_copies"
    __table_args__ = (UniqueConstraint("fingerprint", "recipient_hash", name="uq_delivered_copies_copy"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    fingerprint: Mapped[str] = mapped_column(String(64))
    recipient_hash: Mapped[str] = mapped_column(String(64))
    next_hop_reply: Mapped[str] = mapped_column(Text)


class Tenant(Base):
    """A company as the ledger knows it. The row is also the lock that serialises a tenant's redemptions
    across relays (`lock_seq` is bumped by every redemption and correction)."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    lock_seq: Mapped[int] = mapped_column(Integer, default=0)


class ReferralApplicant(Base):
    """When an applicant (keyed hash) last counted as a referral for a company: a rejection within the
    window after that adds no referral. One row per (tenant, applicant), locked while deciding."""

    __tablename__ = "referral_applicants"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recipient_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    counted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """One line of the append-only ledger: never updated, never deleted (a database trigger refuses it).

    kind "referral": +1 referral, written with the referral event that earned it.
    kind "redeem":   +1 slot used, with who redeemed it and why.
    kind "correction": any deltas, with who and why; it is how a mistake is undone."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    referrals: Mapped[int] = mapped_column(Integer, default=0)
    slots_used: Mapped[int] = mapped_column(Integer, default=0)
    slots_adjusted: Mapped[int] = mapped_column(Integer, default=0)
    referral_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("referral_events.id"), unique=True, nullable=True
    )
    actor: Mapped[str | None] = mapped_column(String(256), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Click(Base):
    """A request for /r/<token>. Scanner clicks are kept, flagged, so KPIs count people."""

    __tablename__ = "clicks"
    __table_args__ = (Index("ix_clicks_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    referral_event_id: Mapped[int] = mapped_column(ForeignKey("referral_events.id"))
    method: Mapped[str] = mapped_column(String(8))
    scanner: Mapped[bool] = mapped_column(Boolean)
    scanner_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)  # cleared by purge
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)  # cleared by purge


class Registration(Base):
    """An applicant registered with the referral service using a token (signed webhook, issue 6)."""

    __tablename__ = "registrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    # One registration per referral: a second webhook for the same token is a duplicate.
    referral_event_id: Mapped[int] = mapped_column(ForeignKey("referral_events.id"), unique=True)
    # The webhook-id header: the same delivery retried is recognised and changes nothing.
    webhook_id: Mapped[str] = mapped_column(String(256), unique=True)


class RejectionSeen(Base):
    """A rejection mail of a tenant, decorated or not: the denominator of the follow-up rate."""

    __tablename__ = "rejections_seen"
    __table_args__ = (Index("ix_rejections_seen_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    decorated: Mapped[bool] = mapped_column(Boolean)
    # The message fingerprint: a retried message is one rejection. Cleared by purge.
    fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
