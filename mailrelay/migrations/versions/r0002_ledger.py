"""The referral ledger (issue 6): tenants, applicant windows, append-only ledger lines, clicks,
registrations, rejections seen, and the purge mark on referral events.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

# The ledger is append-only in the database itself, not only by convention in the code: a finance person
# can then trust that every balance is the sum of the lines shown.
PG_APPEND_ONLY = """
CREATE FUNCTION mailrelay_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: add a correction instead';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION mailrelay_ledger_append_only();
"""
SQLITE_APPEND_ONLY = [
    """CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
       BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only: add a correction instead'); END""",
    """CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
       BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only: add a correction instead'); END""",
]


def upgrade() -> None:
    with op.batch_alter_table("referral_events") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("lock_seq", sa.Integer(), nullable=False),
    )
    op.create_table(
        "referral_applicants",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("recipient_hash", sa.String(64), primary_key=True),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.Column("slots_used", sa.Integer(), nullable=False),
        sa.Column("slots_adjusted", sa.Integer(), nullable=False),
        sa.Column(
            "referral_event_id", sa.Integer(), sa.ForeignKey("referral_events.id"), nullable=True, unique=True
        ),
        sa.Column("actor", sa.String(256), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_ledger_entries_tenant_time", "ledger_entries", ["tenant_id", "created_at"])
    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("referral_event_id", sa.Integer(), sa.ForeignKey("referral_events.id"), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("scanner", sa.Boolean(), nullable=False),
        sa.Column("scanner_reason", sa.String(32), nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
    )
    op.create_index("ix_clicks_tenant_time", "clicks", ["tenant_id", "created_at"])
    op.create_table(
        "registrations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column(
            "referral_event_id",
            sa.Integer(),
            sa.ForeignKey("referral_events.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("webhook_id", sa.String(256), nullable=False, unique=True),
    )
    op.create_table(
        "rejections_seen",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("decorated", sa.Boolean(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True, unique=True),
    )
    op.create_index("ix_rejections_seen_tenant_time", "rejections_seen", ["tenant_id", "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
    else:
        for statement in SQLITE_APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION mailrelay_ledger_append_only()")
    op.drop_table("rejections_seen")
    op.drop_table("registrations")
    op.drop_table("clicks")
    op.drop_table("ledger_entries")
    op.drop_table("referral_applicants")
    op.drop_table("tenants")
    with op.batch_alter_table("referral_events") as batch:
        batch.drop_column("purged_at")
