"""SQLAlchemy 2 tables of the referral-event store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ReferralEvent(Base):
    """One decorated rejection copy accepted by the next hop: one applicant referred by one company."""

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
