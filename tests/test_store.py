"""The event store on SQLite and on the real PostgreSQL server: retries count once, marks are found.

The fixtures here (`db_url`, `store`) are imported by the ledger, tracking and report tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import DateTime, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mailrelay.store import CopyRecord, EventStore, ReferralFields, SeenRejection, events
from mailrelay.store.driver import SAVEPOINT, CursorHolder, Driver
from mailrelay.store.models import ReferralEvent

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


def test_a_journal_replay_writes_at_the_delivery_time_and_counts_once(store: EventStore) -> None:
    """What the journal replays after an outage: the events and the ledger line carry the time the copy was
    delivered, the rejection is counted, and replaying the same entry again changes nothing."""
    from mailrelay.store.models import LedgerEntry, RejectionSeen

    delivered_at = datetime(2026, 10, 31, 23, 59, tzinfo=UTC)  # the database came back in November
    seen = SeenRejection("acme", True, "f" * 64)
    for _ in range(2):
        store.write([referral("t1", "a" * 64)], mark_delivered=False, seen=seen, at=delivered_at)
    with store.sessions() as session:
        times = [
            *session.scalars(select(ReferralEvent.created_at)),
            *session.scalars(select(LedgerEntry.created_at)),
            *session.scalars(select(RejectionSeen.created_at)),
        ]
    assert [t.replace(tzinfo=None) for t in times] == [delivered_at.replace(tzinfo=None)] * 3


async def test_delivered_marks_and_events_are_both_found_for_a_retry(store: EventStore) -> None:
    plain = CopyRecord("e" * 64, "c" * 64, "250 ok", None)
    await store.record([plain, referral("t4", "d" * 64, "e" * 64)], mark_delivered=True)
    asked = {"c" * 64, "d" * 64, "f" * 64}
    assert await store.delivered_recipients("e" * 64, asked) == {"c" * 64, "d" * 64}
    assert await store.delivered_recipients("e" * 64, {"d" * 64}) == {"d" * 64}
    assert await store.delivered_recipients("0" * 64, asked) == set()


async def test_the_sqlite_writer_opens_a_new_connection_after_its_own_failed(tmp_path: Path) -> None:
    """The writer thread keeps its SQLite connection between batches (issue 8); a batch that fails on it
    fails as a database error (the relay journals), and the next batch commits on a new connection."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    try:
        assert await store.record([referral("w1", "1" * 64, "a" * 64)], mark_delivered=False) == 1
        own = store._own_connection
        assert own is not None
        own.pooled.driver_connection.close()  # type: ignore[union-attr]
        with pytest.raises(DBAPIError):
            await store.record([referral("w2", "2" * 64, "b" * 64)], mark_delivered=False)
        assert await store.record([referral("w3", "3" * 64, "c" * 64)], mark_delivered=False) == 1
        assert store._own_connection is not None and store._own_connection is not own
        assert store.count_events() == 2
    finally:
        store.close()
    assert store._own_connection is None


async def test_on_sqlite_the_retry_check_is_answered_on_the_callers_thread(tmp_path: Path) -> None:
    """Issue 8: after the first check (on the reader thread, which opens the loop's connection: opening
    one may wait for a lock), the read is done on the event loop, its answer ready at once, without
    waking the reader thread (that hand-off cost 0.15 ms of every rejection under load)."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    try:
        await store.record([CopyRecord("e" * 64, "c" * 64, "250 ok", None)], mark_delivered=True)
        first = store.delivered_recipients("e" * 64, {"c" * 64, "d" * 64})
        assert not first.done()
        assert await first == {"c" * 64}
        assert store._loop_read_connection is not None
        driver_connection = store._loop_read_connection.pooled.driver_connection
        assert driver_connection is not None
        # Busy must never mean "sleep on the loop": the loop's connection does not wait for locks.
        assert driver_connection.execute("PRAGMA busy_timeout").fetchone() == (0,)
        answer = store.delivered_recipients("e" * 64, {"c" * 64, "d" * 64})
        assert answer.done() and answer.result() == {"c" * 64}
    finally:
        store.close()
    assert store._loop_read_connection is None


async def test_the_retry_check_opens_new_connections_after_its_own_failed(tmp_path: Path) -> None:
    """On SQLite the check keeps a connection on the loop and one on its thread (issue 8): when the loop's
    fails, the thread answers; when both fail, that is the database error the relay journals for; each
    next check works on new connections."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()

    def break_connection(own: events.OwnConnection | None) -> None:
        assert own is not None
        own.pooled.driver_connection.close()  # type: ignore[union-attr]

    try:
        await store.record([CopyRecord("e" * 64, "c" * 64, "250 ok", None)], mark_delivered=True)
        assert await store.delivered_recipients("e" * 64, {"c" * 64}) == {"c" * 64}
        broken = store._loop_read_connection
        break_connection(broken)
        assert await store.delivered_recipients("e" * 64, {"c" * 64}) == {"c" * 64}  # from the thread
        assert store._loop_read_connection not in (None, broken)  # the thread opened a new one
        assert store.delivered_recipients("e" * 64, {"c" * 64}).result() == {"c" * 64}  # on the loop
        break_connection(store._loop_read_connection)
        break_connection(store._read_connection)
        with pytest.raises(DBAPIError):
            await store.delivered_recipients("e" * 64, {"c" * 64})
        assert await store.delivered_recipients("e" * 64, {"c" * 64}) == {"c" * 64}
    finally:
        store.close()


async def test_the_store_threads_carry_their_names_in_the_kernel(tmp_path: Path) -> None:
    """Issue 8: `top -H`, `ps -L` and the benchmark tell the store's CPU from the event loop's by the
    kernel's thread names (Python's own stay inside Python)."""

    def kernel_names() -> set[str]:
        return {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}

    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    try:
        await store.record([CopyRecord("e" * 64, "c" * 64, "250 ok", None)], mark_delivered=True)
        await store.delivered_recipients("e" * 64, {"c" * 64})
        assert {events.WRITER, events.READER, events.CHECKPOINTER} <= kernel_names()
        loop_thread = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        assert loop_thread not in (events.WRITER, events.READER, events.CHECKPOINTER)
    finally:
        store.close()
    assert not {events.WRITER, events.READER, events.CHECKPOINTER} & kernel_names()


def _rows_in_database_file(path: Path) -> int:
    """Referral events in the database file itself, not counting the write-ahead log (immutable=1 reads
    the file as it is, ignoring the log); none while the schema itself is only in the log."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM referral_events").fetchone()[0])
        except sqlite3.OperationalError:  # no such table yet
            return 0


async def test_the_checkpointer_moves_the_log_into_the_database_file_off_the_commit_path(
    tmp_path: Path,
) -> None:
    """Issue 8: the group commit's connection checkpoints only past the backstop, so a checkpoint no longer
    holds up the batch whose commit crossed SQLite's default 1000 pages; the checkpointer thread copies the
    log into the database file instead."""
    path = tmp_path / "events.db"
    store = EventStore(f"sqlite:///{path}")
    store.create_schema()
    store.checkpoint_interval = 0.05
    try:
        for n in range(3):
            record = CopyRecord(
                f"{n}" * 64, "c" * 64, "250 ok", ReferralFields("acme", f"t{n}", "r", None, None)
            )
            await store.record([record], mark_delivered=False)

        def autocheckpoint() -> int:
            assert store._own_connection is not None
            return int(store._own_connection.cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

        assert store._executor.submit(autocheckpoint).result() == events.BACKSTOP_PAGES
        deadline = asyncio.get_running_loop().time() + 10
        while _rows_in_database_file(path) < 3:
            assert asyncio.get_running_loop().time() < deadline, "the log was not checkpointed"
            await asyncio.sleep(0.02)
    finally:
        store.close()


async def test_the_group_commit_keeps_its_savepoints_journals_in_memory(tmp_path: Path) -> None:
    """Issue 8: a savepoint's journal stays in memory, not in a temporary file created, written and
    unlinked in every batch (the WAL alone recovers a crash)."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    try:
        record = CopyRecord("f" * 64, "c" * 64, "250 ok", ReferralFields("acme", "t1", "r", None, None))
        await store.record([record], mark_delivered=False)

        def temp_store() -> int:
            assert store._own_connection is not None
            return int(store._own_connection.cursor.execute("PRAGMA temp_store").fetchone()[0])

        assert store._executor.submit(temp_store).result() == 2  # MEMORY
    finally:
        store.close()


def test_a_failing_checkpoint_is_logged_once_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint that fails (the file unreadable, a full disk) says so once, not every half second, says
    when it works again, and the thread goes on: the writer's backstop bounds the log meanwhile."""

    class Engine:
        """raw_connection fails twice, then hands out a working connection."""

        def __init__(self) -> None:
            self.calls = 0
            self.worked = threading.Event()

        def raw_connection(self) -> Any:
            self.calls += 1
            if self.calls <= 2:
                raise sqlite3.OperationalError("disk I/O error")
            self.worked.set()
            return Pooled()

    class Pooled:
        """What OwnConnection takes from the pool: a DB-API connection under driver_connection."""

        driver_connection = sqlite3.connect(":memory:", check_same_thread=False)

        def close(self) -> None:
            self.driver_connection.close()

    engine = Engine()
    caplog.set_level("INFO", logger="mailrelay.store")
    driver = Driver(create_engine("sqlite://").dialect)
    checkpointer = events.WalCheckpointer(engine, driver, 0.01)  # type: ignore[arg-type]
    try:
        assert engine.worked.wait(10)
        for _ in range(500):  # the line is logged just after the checkpoint that worked
            if "WAL checkpoints work again" in caplog.text:
                break
            time.sleep(0.01)
    finally:
        checkpointer.stop()
    assert caplog.text.count("store: WAL checkpoint failed (disk I/O error)") == 1
    assert "store: WAL checkpoints work again" in caplog.text
    assert not checkpointer.failing


async def test_a_thread_name_the_kernel_refuses_does_not_break_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The naming is cosmetic: an executor whose initializer raises is broken for good (issue 8)."""

    def refuse(*_args: object, **_kwargs: object) -> int:
        raise RuntimeError("not what naming a thread should ever raise")

    monkeypatch.setattr(Path, "write_text", refuse)
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    try:
        # A broken writer would leave the write waiting for ever: a bounded wait fails instead.
        assert await asyncio.wait_for(store.record([referral("n1", "1" * 64)], mark_delivered=False), 10) == 1
        assert await asyncio.wait_for(store.delivered_recipients("f" * 64, {"1" * 64}), 10) == {"1" * 64}
    finally:
        store.close()


async def test_a_bug_in_the_group_commit_fails_its_writes_instead_of_leaving_them_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each reply waits for its write: a drain that stopped on a bug must fail the writes it held (the
    relay journals them), and the next write must start a new one."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    commit = store._commit

    def broken(batch: Any) -> None:
        monkeypatch.setattr(store, "_commit", commit)  # once
        raise RuntimeError("a bug in the group commit")

    monkeypatch.setattr(store, "_commit", broken)
    try:
        with pytest.raises(RuntimeError, match="a bug in the group commit"):
            await asyncio.wait_for(store.record([referral("b1", "1" * 64)], mark_delivered=False), 10)
        assert await asyncio.wait_for(store.record([referral("b2", "2" * 64)], mark_delivered=False), 10) == 1
        assert store.count_events() == 1
        assert "store: the group commit stopped; failing 1 waiting write(s)" in caplog.text
    finally:
        store.close()


async def test_rows_written_on_the_driver_cursor_read_back_as_the_orm_writes_them(store: EventStore) -> None:
    """The per-message statements bypass SQLAlchemy (issue 8) but keep its datetime storage: on SQLite the
    same text as the ORM's DateTime writes, so reports and the dedupe window compare like with like."""
    before = datetime.now(UTC)
    await store.record([referral("dt", "d" * 64, "e" * 64)], mark_delivered=False)
    with store.sessions() as session:
        (created_at,) = session.execute(select(ReferralEvent.created_at)).one()
        raw = session.execute(text("SELECT created_at FROM referral_events")).scalar_one()
        orm_text = (
            DateTime(timezone=True).dialect_impl(store.engine.dialect).bind_processor(store.engine.dialect)
        )
    stored = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    assert before <= stored <= datetime.now(UTC)
    if store.engine.dialect.name == "sqlite":
        assert orm_text is not None and raw == orm_text(stored)


async def test_a_failed_statement_on_the_driver_cursor_does_not_carry_its_parameters(
    store: EventStore,
) -> None:
    """The error's text is logged (the group commit's failure, the click endpoint's): SQLAlchemy ends it
    with the statement's parameters, a token and an applicant's address among them."""
    store.transaction(lambda s: s.execute(text("ALTER TABLE referral_events RENAME TO gone")))
    with pytest.raises(DBAPIError) as failed:
        await store.record([referral("secret-token", "d" * 64, "e" * 64)], mark_delivered=False)
    assert "secret-token" not in str(failed.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(failed.value)


async def held(store: EventStore, *writes: Awaitable[object]) -> list[object]:
    """Submit `writes` while the store's thread is busy, so that they all wait for the same next batch."""
    gate = threading.Event()
    busy = asyncio.ensure_future(store._run(gate.wait))
    tasks = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0.05)  # every task has queued its job
    gate.set()
    await busy
    return await asyncio.gather(*tasks, return_exceptions=True)


def counted_commits(store: EventStore) -> list[object]:
    """A list that gets an entry for each transaction the store commits (the writer's, and the rest)."""
    commits: list[object] = []
    # PostgreSQL's batches commit through SQLAlchemy; SQLite's writer commits on its own connection.
    event.listen(store.engine, "commit", commits.append)
    execute = store.driver.execute

    def counting_execute(cursor: Any, statement: str, params: Any = None) -> Any:
        if statement == "COMMIT":
            commits.append(cursor)
        return execute(cursor, statement, params)

    store.driver.execute = counting_execute  # type: ignore[method-assign]
    return commits


async def test_concurrent_writes_share_one_transaction_and_all_land(store: EventStore) -> None:
    """Group commit (issue 8): what arrives while the database is busy goes into the next transaction,
    one transaction in the database itself: another connection sees none of it until the batch commits.
    (On SQLite the sqlite3 module's own transaction handling once made each job's savepoint a transaction
    of its own; counting SQLAlchemy's commits did not show it.)"""
    commits = counted_commits(store)
    outsider = create_engine(store.url)

    def seen_from_outside(_session: Session) -> int:
        with outsider.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM referral_events")).scalar_one())

    writes = [
        store.record_events([referral(f"g{i}", f"{i:064x}", f"{i:064x}")], mark_delivered=False)
        for i in range(60)
    ]
    seen = [
        store.record_events([], mark_delivered=False, seen=SeenRejection("acme", True, f"{i:064x}"))
        for i in range(60)
    ]
    results = await held(store, *writes, store._batched(seen_from_outside), *seen)
    outsider.dispose()
    assert all(isinstance(ids, list) and len(ids) == 1 for ids in results[:60]), results
    assert results[60] == 0  # the 60 events before it were written but not yet committed
    assert store.count_events() == 60
    assert len(commits) == 1


async def test_a_commit_waits_for_a_write_announced_as_coming_and_shares_its_transaction(
    store: EventStore,
) -> None:
    """A rejection on its way to the next hop announces its write (expect_write): a commit that would start
    meanwhile waits for it, and both go in one transaction (issue 8: most batches were of one message)."""
    store.sibling_wait = 60.0  # the wait ends when the write arrives, not by the clock
    commits = counted_commits(store)
    coming = store.expect_write()
    first = asyncio.ensure_future(
        store.record_events([referral("s1", "1" * 64, "1" * 64)], mark_delivered=False)
    )
    await asyncio.sleep(0.05)
    assert not first.done()  # held for the announced write
    second = store.record_events(
        [referral("s2", "2" * 64, "2" * 64)],
        mark_delivered=False,
        seen=SeenRejection("acme", True, "2" * 64),
        expected=coming,
    )
    results = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [len(ids) for ids in results] == [1, 1]
    assert len(commits) == 1
    coming.withdraw()  # after it was handed in: nothing more to count
    assert store._expected == 0


async def test_a_withdrawn_announcement_no_longer_holds_a_commit(store: EventStore) -> None:
    """A message that will not record after all (its store read failed, a bug on the way) withdraws its
    announcement: the commit waiting for it goes ahead, and a second withdrawal counts nothing."""
    store.sibling_wait = 60.0
    coming = store.expect_write()
    write = asyncio.ensure_future(store.record([referral("w1", "1" * 64)], mark_delivered=False))
    await asyncio.sleep(0.05)
    assert not write.done()
    coming.withdraw()
    coming.withdraw()
    assert await asyncio.wait_for(write, 10) == 1
    assert store._expected == 0


async def test_an_announced_write_that_never_comes_holds_a_commit_for_sibling_wait_only(
    store: EventStore,
) -> None:
    """The wait is bounded: an announced write whose next hop is slow does not hold the others' replies."""
    coming = store.expect_write()
    assert store.sibling_wait == events.SIBLING_WAIT
    assert await asyncio.wait_for(store.record([referral("n1", "1" * 64)], mark_delivered=False), 10) == 1
    assert store._expected == 1
    coming.withdraw()


async def test_a_failing_job_spoils_only_itself_and_a_failing_database_spoils_the_batch(
    store: EventStore,
) -> None:
    def broken(_session: Session) -> None:
        raise ValueError("a bug in one job")

    good = store.record_events([referral("ok", "1" * 64, "2" * 64)], mark_delivered=False)
    results = await held(store, store._batched(broken), good)
    assert isinstance(results[0], ValueError) and results[1] != [], results
    assert store.count_events() == 1

    def database_error(session: CursorHolder) -> None:
        store.driver.execute(store.driver.cursor(session), "SELECT * FROM no_such_table")

    doomed = store.record_events([referral("lost", "3" * 64, "4" * 64)], mark_delivered=False)
    results = await held(store, store._batched(database_error), doomed)
    assert all(isinstance(r, DBAPIError) for r in results), results
    assert store.count_events() == 1  # the batch was rolled back: the caller journals its records


async def test_a_batch_takes_a_savepoint_per_job_only_once_a_job_has_failed(store: EventStore) -> None:
    """Issue 8: a batch whose jobs all succeed runs them in turn, without SAVEPOINT and RELEASE (two round
    trips a job on PostgreSQL). A job that fails after writing part of its rows sends its batch back,
    rolled back, to run again with a savepoint per job: its rows are gone, the other jobs' land."""
    statements: list[str] = []
    execute = store.driver.execute

    def counting_execute(cursor: Any, statement: str, params: Any = None) -> Any:
        statements.append(statement)
        return execute(cursor, statement, params)

    store.driver.execute = counting_execute  # type: ignore[method-assign]
    writes = [
        store.record_events([referral(f"a{i}", f"{i:064x}", f"{i:064x}")], mark_delivered=False)
        for i in range(3)
    ]
    assert [len(ids) for ids in await held(store, *writes)] == [1, 1, 1]  # type: ignore[arg-type]
    assert SAVEPOINT not in statements

    def half_written(session: CursorHolder) -> None:
        store._rejection_seen(session, "acme", True, "e" * 64, datetime.now(UTC))
        raise ValueError("a bug after the job's first row")

    statements.clear()
    good = store.record_events([referral("b", "b" * 64, "c" * 64)], mark_delivered=False)
    # The good job first: its rows of the first try are rolled back with the batch and written again.
    written, failed = await held(store, good, store._batched(half_written))
    assert isinstance(failed, ValueError) and isinstance(written, list) and len(written) == 1
    assert statements.count(SAVEPOINT) == 2  # the batch again, a savepoint per job
    assert store.count_events() == 4
    with store.sessions() as session:
        seen = text("SELECT count(*) FROM rejections_seen WHERE fingerprint = :f")
        assert session.execute(seen, {"f": "e" * 64}).scalar_one() == 0


async def test_a_sqlite_writer_waits_for_the_write_lock_then_gives_up(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock: a write waits for it (polling, issue 8), and past
    WRITE_LOCK_WAIT fails as a database error, which the relay answers by journalling (issue 5)."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.create_schema()
    other = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(
            store.record([referral("w1", "1" * 64, "2" * 64)], mark_delivered=False)
        )
        await asyncio.sleep(events.WRITE_LOCK_WAIT / 3)
        assert not write.done()
        other.execute("COMMIT")
        assert await write == 1

        other.execute("BEGIN IMMEDIATE")
        # The retry check before forwarding only reads: it needs no write lock (before, it waited for one
        # and failed with the write below).
        assert await store.delivered_recipients("2" * 64, {"1" * 64, "5" * 64}) == {"1" * 64}
        with pytest.raises(DBAPIError, match="database is locked"):
            await store.record([referral("w2", "3" * 64, "4" * 64)], mark_delivered=False)
        other.execute("COMMIT")
    finally:
        other.close()
        store.close()
    check = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    assert check.count_events() == 1
    check.close()
