"""The referral ledger on SQLite and on the real PostgreSQL server: exact counting (retries, the dedupe
window, concurrent relays), slots earned, redeemed and corrected, append-only lines, migrations, purge."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from test_store import db_url, referral, store

from conftest import SettingsFactory
from mailrelay.store import EventStore, LedgerError, SchemaError, ledger, schema
from mailrelay.store.models import Base, LedgerEntry, ReferralApplicant, ReferralEvent
from mailrelay.store.purge import purge
from mailrelay.store.tracking import record_click

__all__ = ["db_url", "store"]  # fixtures

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def balance(store: EventStore, tenant: str = "acme", ratio: int = 10) -> ledger.Balance:
    return store.transaction(lambda s: ledger.balance(s, tenant, ratio))


async def test_the_same_applicant_within_the_window_is_one_referral(store: EventStore) -> None:
    # Two different rejection mails of one company to one applicant: two events, one referral.
    await store.record([referral("t1", "a" * 64, "1" * 64)], mark_delivered=False)
    await store.record([referral("t2", "a" * 64, "2" * 64)], mark_delivered=False)
    # Another company rejecting the same applicant is a referral of its own.
    await store.record([referral("t3", "a" * 64, "3" * 64, tenant="other")], mark_delivered=False)
    assert store.count_events() == 3
    assert balance(store).referrals == 1
    assert balance(store, "other").referrals == 1

    # Once the window has passed since the applicant last counted, a new rejection counts again.
    store.transaction(
        lambda s: s.execute(
            update(ReferralApplicant).values(counted_at=datetime.now(UTC) - store.dedupe_window)
        )
    )
    await store.record([referral("t4", "a" * 64, "4" * 64)], mark_delivered=False)
    assert balance(store).referrals == 2


async def test_slots_are_earned_per_ratio_and_redeemed_with_who_and_why(store: EventStore) -> None:
    await store.record([referral(f"t{i}", f"{i:064d}", "f" * 64) for i in range(23)], mark_delivered=False)
    b = balance(store, ratio=10)
    assert (b.referrals, b.earned, b.used, b.left) == (23, 2, 0, 2)
    assert balance(store, ratio=5).earned == 4  # the tenant's own ratio

    store.transaction(lambda s: ledger.redeem(s, "acme", 10, "Sato (HR)", "placement 2026-014", NOW))
    store.transaction(lambda s: ledger.redeem(s, "acme", 10, "Sato (HR)", "placement 2026-015", NOW))
    with pytest.raises(LedgerError, match="no free slot"):
        store.transaction(lambda s: ledger.redeem(s, "acme", 10, "Sato (HR)", "one too many", NOW))
    with pytest.raises(LedgerError, match="who"):
        store.transaction(lambda s: ledger.redeem(s, "acme", 10, " ", "no name", NOW))

    # A mistaken redemption is undone by a correction line, never by editing the ledger.
    store.transaction(
        lambda s: ledger.correct(
            s,
            "acme",
            referrals=0,
            slots_adjusted=0,
            slots_used=-1,
            by="Ito",
            reason="2026-015 was a test",
            now=NOW,
        )
    )
    b = balance(store)
    assert (b.earned, b.used, b.left) == (2, 1, 1)

    lines = store.transaction(lambda s: ledger.lines(s, "acme", 10))
    assert [x.kind for x in lines] == ["referral"] * 23 + ["redeem", "redeem", "correction"]
    assert lines[-2].actor == "Sato (HR)" and lines[-2].reason == "placement 2026-015"
    # Every line carries the running totals: the last one is the balance.
    assert (lines[-1].total_referrals, lines[-1].total_earned, lines[-1].total_used, lines[-1].balance) == (
        23,
        2,
        1,
        1,
    )
    assert [x.balance for x in lines[9:11]] == [1, 1] and lines[8].balance == 0


async def test_the_ledger_is_append_only_in_the_database(store: EventStore) -> None:
    await store.record([referral("t1", "a" * 64)], mark_delivered=False)
    for statement in ("UPDATE ledger_entries SET referrals = 5", "DELETE FROM ledger_entries"):
        with pytest.raises(DBAPIError, match="append-only"):
            store.transaction(lambda s, st=statement: s.execute(text(st)))
    assert balance(store).referrals == 1


def test_concurrent_relays_never_double_count_nor_skip(db_url: str) -> None:
    """Six relays (each its own engine and connection pool, threads released on every query) write at once
    to one database: the same messages retried everywhere, and each relay's own rejections of the same
    40 applicants. The totals are exact."""
    setup = EventStore(db_url)
    setup.create_schema()
    setup.close()
    relays, applicants = 6, 40
    barrier = threading.Barrier(relays)
    errors: list[BaseException] = []

    def relay(k: int) -> None:
        store = EventStore(db_url)
        try:
            shared = [referral(f"s{k}-{i}", f"{i:064x}", f"{i:064x}") for i in range(applicants)]
            own = [referral(f"o{k}-{i}", f"{i:064x}", f"{k + 1000:032x}{i:032x}") for i in range(applicants)]
            mixed = [r for pair in zip(shared, own, strict=True) for r in pair]
            barrier.wait()
            store.write(mixed if k % 2 else mixed[::-1], mark_delivered=False)
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=relay, args=(k,)) for k in range(relays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    check = EventStore(db_url)
    try:
        assert check.count_events() == applicants + relays * applicants
        assert balance(check).referrals == applicants
        entries = check.transaction(lambda s: s.scalar(select(func.count(LedgerEntry.id))))
        assert entries == applicants
    finally:
        check.close()


def test_concurrent_redemptions_never_spend_a_slot_twice(db_url: str) -> None:
    setup = EventStore(db_url)
    setup.create_schema()
    setup.transaction(
        lambda s: ledger.correct(
            s, "acme", referrals=0, slots_adjusted=5, slots_used=0, by="test", reason="five slots", now=NOW
        )
    )
    setup.close()
    barrier = threading.Barrier(12)
    outcomes: list[str] = []

    def company_user(k: int) -> None:
        store = EventStore(db_url)
        try:
            barrier.wait()
            store.transaction(lambda s: ledger.redeem(s, "acme", 10, f"user{k}", "race", NOW))
            outcomes.append("ok")
        except LedgerError:
            outcomes.append("refused")
        finally:
            store.close()

    threads = [threading.Thread(target=company_user, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["refused"] * 7
    check = EventStore(db_url)
    assert balance(check).left == 0
    check.close()


def test_an_empty_database_is_migrated_at_start_and_matches_the_models(db_url: str) -> None:
    store = EventStore(db_url)
    try:
        assert schema.current_revision(store.engine) is None
        assert "empty database" in store.check_schema()
        assert schema.current_revision(store.engine) == schema.head()
        assert store.check_schema() == f"schema at {schema.head()}"
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        store.close()


def test_a_database_made_before_migrations_is_recognised_and_upgraded(db_url: str) -> None:
    store = EventStore(db_url)
    try:
        schema.upgrade(store.engine, "0001")
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))  # what create_all used to leave
        assert schema.current_revision(store.engine) == "0001"
        if store.engine.dialect.name == "sqlite":
            assert "upgraded from 0001" in store.check_schema()
        else:
            # Several relays share PostgreSQL: an older schema is upgraded once, on purpose.
            with pytest.raises(SchemaError, match="mailrelay db upgrade"):
                store.check_schema()
            store.create_schema()
        assert schema.current_revision(store.engine) == schema.head()
    finally:
        store.close()


def test_a_newer_schema_is_refused(db_url: str) -> None:
    store = EventStore(db_url)
    try:
        store.create_schema()
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaError, match="newer"):
            store.check_schema()
    finally:
        store.close()


async def test_purge_removes_what_points_at_people_and_keeps_every_total(store: EventStore) -> None:
    await store.record(
        [referral(f"tok{i:016d}", f"{i:064d}", "f" * 64) for i in range(12)], mark_delivered=False
    )
    later = datetime.now(UTC) + timedelta(minutes=1)
    store.transaction(
        lambda s: record_click(
            s,
            "tok0000000000000000",
            method="GET",
            ip="192.0.2.1",
            user_agent="Firefox",
            now=later,
            scanner_reason=None,
            too_soon=timedelta(0),
        )
    )
    store.transaction(lambda s: ledger.redeem(s, "acme", 10, "Sato", "placement", NOW))
    before = balance(store)
    lines_before = store.transaction(lambda s: ledger.lines(s, "acme", 10))

    cutoff = datetime.now(UTC) + timedelta(days=1)
    result = store.transaction(lambda s: purge(s, cutoff, cutoff))
    assert (result.events, result.clicks, result.applicants) == (12, 1, 12)
    assert balance(store) == before
    assert store.transaction(lambda s: ledger.lines(s, "acme", 10)) == lines_before
    events = store.transaction(lambda s: list(s.scalars(select(ReferralEvent))))
    assert all(e.recipient_hash.startswith("purged-") and e.token.startswith("purged-") for e in events)
    assert all(e.message_id is None and e.purged_at is not None for e in events)
    # The old link no longer resolves; a purge run again finds nothing left to do.
    none = store.transaction(
        lambda s: record_click(
            s,
            "tok0000000000000000",
            method="GET",
            ip=None,
            user_agent=None,
            now=cutoff,
            scanner_reason=None,
            too_soon=timedelta(0),
        )
    )
    assert none is None
    assert store.transaction(lambda s: purge(s, cutoff, cutoff)).events == 0


def test_ledger_cli_redeem_is_refused_without_a_slot_and_a_correction_grants_one(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailrelay.app import build
    from mailrelay.cli import main

    settings = make_settings()
    build(settings).store.close()  # the schema, as `serve` makes it
    config = ["--config", str(settings.source), "--tenant", "acme", "--by", "hr-lead"]
    assert main(["ledger", "redeem", *config, "--reason", "placement #1"]) == 1
    assert "mailrelay:" in capsys.readouterr().err
    assert main(["ledger", "correct", *config, "--slots", "1", "--reason", "goodwill"]) == 0
    assert "1 slot(s) left" in capsys.readouterr().out
    assert main(["ledger", "redeem", *config, "--reason", "placement #1"]) == 0
    assert "1 slot redeemed for acme by hr-lead; 0 left" in capsys.readouterr().out
