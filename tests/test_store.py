"""The event store on SQLite and on the real PostgreSQL server: retries count once, marks are found.

The fixtures here (`db_url`, `store`) are imported by the ledger, tracking and report tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from mailrelay.store import CopyRecord, EventStore, ReferralFields

POSTGRES = os.environ.get("MAILRELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a schema of its own on the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    # A schema of its own per test, on the real server: tests never see each other's rows.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    store = EventStore(db_url)
    store.create_schema()
    yield store
    store.close()


def referral(
    token: str, recipient_hash: str, fingerprint: str = "f" * 64, tenant: str = "acme"
) -> CopyRecord:
    return CopyRecord(
        fingerprint=fingerprint,
        recipient_hash=recipient_hash,
        next_hop_reply="250 2.0.0 Ok",
        referral=ReferralFields(
            tenant_id=tenant, token=token, rule_id="ja", message_id="<m@x>", recipient=None
        ),
    )


async def test_a_retried_copy_is_counted_once(store: EventStore) -> None:
    assert await store.record([referral("t1", "a" * 64), referral("t2", "b" * 64)], mark_delivered=False) == 2
    # The sender retries the same message: the same recipients get new tokens but are the same referrals.
    assert await store.record([referral("t3", "a" * 64)], mark_delivered=False) == 0
    assert store.count_events() == 2


async def test_delivered_marks_and_events_are_both_found_for_a_retry(store: EventStore) -> None:
    plain = CopyRecord("e" * 64, "c" * 64, "250 ok", None)
    await store.record([plain, referral("t4", "d" * 64, "e" * 64)], mark_delivered=True)
    assert await store.delivered_recipients("e" * 64) == {"c" * 64, "d" * 64}
    assert await store.delivered_recipients("0" * 64) == set()
