"""The first schema (issues 2 and 5): referral events and the delivered-copy marks of split messages.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "referral_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=True),
        sa.Column("recipient_hash", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("next_hop_reply", sa.Text(), nullable=False),
        sa.UniqueConstraint("fingerprint", "recipient_hash", name="uq_referral_events_copy"),
    )
    op.create_index("ix_referral_events_tenant_time", "referral_events", ["tenant_id", "created_at"])
    op.create_table(
        "delivered_copies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("recipient_hash", sa.String(64), nullable=False),
        sa.Column("next_hop_reply", sa.Text(), nullable=False),
        sa.UniqueConstraint("fingerprint", "recipient_hash", name="uq_delivered_copies_copy"),
    )


def downgrade() -> None:
    op.drop_table("delivered_copies")
    op.drop_index("ix_referral_events_tenant_time", "referral_events")
    op.drop_table("referral_events")
