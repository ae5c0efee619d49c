"""Writes referral events (and their ledger lines) and delivered-copy marks; reads the marks that make a
retried message idempotent; the async door to the ledger, clicks, registrations and purge (issue 6)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, PoolProxiedConnection, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mailrelay.store import driver as driver_sql
from mailrelay.store import ledger, schema
from mailrelay.store import tracking as tracking_store
from mailrelay.store.driver import RELEASE, ROLLBACK_TO, SAVEPOINT, CursorHolder, Driver
from mailrelay.store.models import ReferralEvent

T = TypeVar("T")

log = logging.getLogger("mailrelay.store")

# The same applicant rejected again by the same company within this time is one referral (issue 6).
DEFAULT_DEDUPE_WINDOW = timedelta(days=180)


@dataclass(frozen=True)
class CopyRecord:
    """One copy the next hop accepted. `referral` is set for decorated copies (they are referral events)."""

    fingerprint: str
    recipient_hash: str
    next_hop_reply: str
    referral: ReferralFields | None = None


@dataclass(frozen=True)
class SeenRejection:
    """A rejection mail of `tenant_id`, decorated or not: the follow-up rate's denominator (issue 6). A
    retried message (same fingerprint) counts once, as decorated if any attempt was."""

    tenant_id: str
    decorated: bool
    fingerprint: str | None


@dataclass(frozen=True)
class ReferralFields:
    tenant_id: str
    token: str
    rule_id: str
    message_id: str | None
    recipient: str | None


# Wait briefly for a lock, then let the relay journal the record: mail must keep flowing (issue 5).
BUSY_TIMEOUT_MS = 500


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling would begin a transaction only before an INSERT or
    # UPDATE and never for SAVEPOINT, so each group-commit job's savepoint was a transaction of its own, one
    # fsync each (issue 8 profile). Off, and SQLAlchemy's "begin" emits BEGIN itself (_sqlite_begin), as
    # the SQLAlchemy SQLite dialect documents under "Serializable isolation / Savepoints".
    dbapi_connection.isolation_level = None
    # WAL lets readers (reports) work while the relay writes; synchronous=FULL so that a committed event
    # survives a power cut, as the ledger counts on it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


# Writers begin IMMEDIATE: they take SQLite's write lock at BEGIN. A deferred transaction that reads and
# then writes fails at once (SQLITE_BUSY, busy handler not called) when another worker has written since its
# read began.
_WRITE = {"mailrelay_sqlite_begin": "BEGIN IMMEDIATE"}
# How long a writer waits for the write lock before the relay journals instead (busy_timeout), and
# how often it asks. SQLite's own busy handler sleeps up to 100 ms between tries: with `serve --workers 2`,
# the worker holding the lock took it again within microseconds of each commit and the other waited past
# the timeout (issue 8: "database is locked", then journalling). Handing the lock over at once instead (an
# flock held from BEGIN IMMEDIATE to COMMIT, which wakes the waiting worker as it is released) gained
# nothing measurable: 20 KB rejections at 10 sessions on a 2-vCPU AMD EPYC, 8 and 16 interleaved rounds,
# paired msg/s ratios median 0.99 and 0.97, idle cores 0.15 with it and 0.14 without. The poll waited
# 0.15-0.16 ms a commit on average (0.20-0.23 polls a commit found the lock taken), the flock 0.10-0.20 ms
# (9-12 % of the commits found it taken).
WRITE_LOCK_WAIT = BUSY_TIMEOUT_MS / 1000
WRITE_LOCK_POLL = 0.0005
# How long a commit waits for writes announced as coming (EventStore.expect_write). The wait ends when they
# have all arrived, so the cap only matters while the relay is busy: then a rejection already at the next
# hop can take several ms to come back to the store, and a commit that gives up on it earlier costs a commit
# more. Issue 8, 20 KB rejections at 10 sessions: waiting at all gave +8 to +10 % msg/s and -8 % CPU per
# message against none (1 and 3 ms alike, on a machine whose fsync took 1.5 ms). On one whose fsync took
# 0.12 ms, in 4 interleaved rounds: 0 / 0.3 / 1 ms gave 825 / 888 / 930 msg/s, and 1 / 2 / 4 / 8 / 16 ms
# 947 / 956 / 972 / 975 / 977 at 1.76 / 1.72 / 1.69 / 1.69 / 1.68 ms of CPU per message; 4 ms against 1,
# 5 KB rejections 1,213 against 1,173 msg/s; p99 latency alike, paced (3.0-3.5 ms) or closed loop.
SIBLING_WAIT = 0.004


def _sqlite_begin(connection: Any) -> None:
    statement = connection.get_execution_options().get("mailrelay_sqlite_begin", "BEGIN")
    if statement == "BEGIN":
        connection.exec_driver_sql(statement)
        return
    _begin_immediate(connection.connection.driver_connection.cursor(), statement)


def _begin_immediate(cursor: Any, statement: str = _WRITE["mailrelay_sqlite_begin"]) -> None:
    """Take SQLite's write lock, asking every WRITE_LOCK_POLL until WRITE_LOCK_WAIT has passed. Any failure
    is raised as SQLAlchemy's DBAPIError, which the store's callers take for "the database failed"."""
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        deadline = time.monotonic() + WRITE_LOCK_WAIT
        try:
            while True:
                try:
                    cursor.execute(statement)
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                        raise
                time.sleep(WRITE_LOCK_POLL)
        finally:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


# The store's threads as `top -H`, `ps -L` and /proc/<pid>/task/<tid>/comm show them (15 bytes at most), so
# that ops, and the benchmark, can tell their CPU from the event loop's (issue 8); Python's own names for
# them are these with the pool's "_0".
WRITER = "mailrelay-db"
READER = "mailrelay-db-rd"
CHECKPOINTER = "mailrelay-db-ck"

# SQLite copies its write-ahead log into the database file (a checkpoint: the pages, then an fsync of the
# file) in the commit that takes the log past wal_autocheckpoint pages, 1000 by default: every few dozen
# group commits, and that batch's replies wait for it. The store's checkpointer does it instead, from a
# thread of its own, every CHECKPOINT_INTERVAL (issue 8: one process recording at 100 msg/s, the record's
# p50 1.03 -> 0.81 ms and p99 6.8 -> 5.9 ms, and alike in a second run). The writer's own automatic
# checkpoint stays as a backstop, past BACKSTOP_PAGES (~40 MB of log), for a checkpointer that stopped or
# falls behind.
CHECKPOINT_INTERVAL = 0.5
BACKSTOP_PAGES = 10_000


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel too (Python's thread names stay inside Python). Linux
    only; elsewhere, or if /proc is not mounted, the thread keeps its name. Never raises: it is the store's
    executors' initializer, and an initializer that raises breaks its executor, and with it the store."""
    with contextlib.suppress(Exception):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])


class EventStore:
    """Database work runs on worker threads, not on the SMTP event loop: one thread writes (group commit)
    and serves the CLI and HTTP endpoints, one answers the relay's retry check. The one exception is that
    check on SQLite, read first on the loop without ever waiting (see delivered_recipients)."""

    def __init__(self, url: str, *, dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW) -> None:
        self.url = url
        self.dedupe_window = dedupe_window
        # A database that does not answer must fail fast, so the relay journals instead of stalling mail.
        connect_args = {"connect_timeout": 3} if url.startswith("postgresql") else {}
        # A server can drop a pooled connection (restart, idle timeout): ping it at checkout. A SQLite file
        # cannot: the ping would be one more statement for every batch and every read (issue 8).
        ping = not url.startswith("sqlite")
        # hide_parameters: SQLAlchemy ends an error's text with the statement's parameters (tokens, the
        # clicking client's address and agent, applicants' addresses), and that text is logged.
        self.engine: Engine = create_engine(
            url, pool_pre_ping=ping, connect_args=connect_args, hide_parameters=True
        )
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.yield_after_commit = self.engine.dialect.name == "sqlite"
        self.driver = Driver(self.engine.dialect)
        info = {"mailrelay_driver": self.driver}
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        write_engine = self.engine.execution_options(**_WRITE)
        self.write_sessions = sessionmaker(write_engine, expire_on_commit=False, info=info)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=WRITER, initializer=name_os_thread, initargs=(WRITER,)
        )
        # The retry check before forwarding only reads: on a thread and connection of its own it never waits
        # behind a batch's commit, nor, on SQLite, for another worker's write lock (issue 8 latency).
        self._reader = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=READER,
            initializer=name_os_thread,
            initargs=(READER,),
        )
        self._read_connection: OwnConnection | None = None  # SQLite: the reader thread's own
        self._loop_read_connection: OwnConnection | None = None  # SQLite: the event loop's, never waits
        # Group commit: the relay's writes wait here while a batch is in the database, then share the next
        # transaction (one commit, one fsync for all of them).
        self._pending: list[_Job] = []
        self._pending_lock = threading.Lock()
        self._draining = False
        # Writes announced (expect_write) and not yet handed in or withdrawn, and the writer's wait for them.
        self._expected = 0
        self._arrived = threading.Condition(self._pending_lock)
        self.sibling_wait = SIBLING_WAIT
        self._own_connection: OwnConnection | None = None  # SQLite: the writer thread's own
        self.checkpoint_interval = CHECKPOINT_INTERVAL
        self._checkpointer: WalCheckpointer | None = None  # SQLite: started with the writer's connection

    def create_schema(self) -> None:
        """Bring the schema to the latest migration (what `mailrelay db upgrade` does)."""
        schema.upgrade(self.engine)

    def check_schema(self) -> str:
        """The check at start: an empty database is created; a newer schema raises SchemaError; an older
        one is upgraded on SQLite (one relay owns the file) and refused on PostgreSQL (several relays)."""
        return schema.check_at_start(self.engine, upgrade_older=self.engine.dialect.name == "sqlite")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def expect_write(self) -> ExpectedWrite:
        """Announce a write that will come soon (a rejection on its way to the next hop records once it has
        answered): until it is handed in or withdrawn, a group commit about to start waits for it, up to
        `sibling_wait`, so that both share one commit."""
        with self._pending_lock:
            self._expected += 1
        return ExpectedWrite(self)

    def withdraw_expected(self, expected: ExpectedWrite) -> None:
        """`expected` will not be handed in (the message will not record): commits stop waiting for it."""
        with self._pending_lock:
            self._settle_expected(expected)

    def _settle_expected(self, expected: ExpectedWrite) -> None:
        """Count `expected` as arrived (handed in, or withdrawn), once; the caller holds _pending_lock."""
        if not expected.settled:
            expected.settled = True
            self._expected -= 1
            self._arrived.notify()

    async def _batched(self, work: Callable[[CursorHolder], T], expected: ExpectedWrite | None = None) -> T:
        """Run `work` in the next group transaction, inside its own savepoint; its result (or exception)
        comes back once that transaction has committed, so a result always means durably stored."""
        loop = asyncio.get_running_loop()
        job = _Job(work, loop.create_future(), loop)
        with self._pending_lock:
            self._pending.append(job)
            start, self._draining = not self._draining, True
            if expected is not None:
                self._settle_expected(expected)
        if start:
            self._executor.submit(self._drain)
        result: T = await job.future
        return result

    def _drain(self) -> None:
        batch: list[_Job] = []
        try:
            while True:
                with self._pending_lock:
                    self._wait_for_expected()
                    batch, self._pending = self._pending, []
                    if not batch:
                        self._draining = False
                        return
                self._commit(batch)
                batch = []  # settled by _commit: a later failure fails only the writes still waiting
                if self._pending and self.yield_after_commit:
                    # More work is waiting, and other processes may be waiting for SQLite's one write lock:
                    # leave it free for a moment before taking it again (they poll every WRITE_LOCK_POLL);
                    # the next batch meanwhile grows, like PostgreSQL's commit_delay.
                    time.sleep(2 * WRITE_LOCK_POLL)
        except BaseException as exc:
            # A bug here must not leave this batch's writes, and every later one, waiting for a drain that
            # has stopped (each reply waits for its write): they fail, the relay journals their records,
            # and the next write starts a new drain. Nobody reads the executor's future: log it here.
            with self._pending_lock:
                waiting, self._pending, self._draining = batch + self._pending, [], False
            log.exception("store: the group commit stopped; failing %d waiting write(s)", len(waiting))
            for job in waiting:
                with contextlib.suppress(RuntimeError):  # that job's loop has closed
                    job.loop.call_soon_threadsafe(_settle, job.future, False, exc)

    def _wait_for_expected(self) -> None:
        """Before a commit, let the writes announced by expect_write join it, up to `sibling_wait` (the
        caller holds _pending_lock, which the wait releases). Under load most batches were of one message,
        one fsync each (issue 8: 74 % of commits at 10 sessions); waiting for the rejections already on
        their way to the next hop is PostgreSQL's commit_delay with commit_siblings, counted exactly. A write
        hands its own announcement in as it arrives, so one message at a time never waits."""
        if not self._expected or not self._pending:
            return
        deadline = time.monotonic() + self.sibling_wait
        while self._expected > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.wait(remaining)

    def _commit(self, batch: list[_Job]) -> None:
        outcomes = self._run_jobs(batch)
        if len(batch) > 1 and any(not ok and _is_conflict(value) for ok, value in outcomes):
            # Two relays' batches locked the same applicants in opposite orders (PostgreSQL broke the
            # deadlock by aborting ours): each job again in a transaction of its own, as without batching.
            outcomes = [self._run_jobs([job])[0] for job in batch]
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, ok, value)
            except RuntimeError:  # the loop has closed (shutdown): nobody waits for this answer any more
                log.debug("store: a result arrived after its event loop closed")

    def _run_jobs(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """The jobs in one transaction, in turn (_in_turn), or each in a savepoint once one of them has
        failed; (True, result) or (False, exception) each. Jobs write through the driver cursor
        (store/driver.py), which the savepoints are set on."""
        if self.engine.dialect.name == "sqlite":
            return self._run_jobs_on_own_connection(batch)
        try:
            try:
                with self.write_sessions() as session, session.begin():
                    return self._in_turn(session, batch)
            except _JobFailed:  # rolled back as it left the transaction
                with self.write_sessions() as session, session.begin():
                    return self._savepointed(session, batch)
        except Exception as exc:  # the database, or the commit, failed: nothing of the batch is stored
            return [(False, exc)] * len(batch)

    def _run_jobs_on_own_connection(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        # SQLite: a file, no server to go away, so the writer thread keeps its connection and writes BEGIN
        # IMMEDIATE and COMMIT itself, like the reader (_read_delivered): a Session, a pool checkout and
        # their events cost ~0.25 ms a batch, more than the batch's statements (issue 8, one message per
        # batch at one session). After an error it opens a new one.
        driver = self.driver
        try:
            if self._own_connection is None:
                self._own_connection = self._open_writer_connection()
            cursor = self._own_connection.cursor
            _begin_immediate(cursor)
            try:
                try:
                    outcomes = self._in_turn(self._own_connection, batch)
                except _JobFailed:
                    driver.execute(cursor, "ROLLBACK")
                    _begin_immediate(cursor)
                    outcomes = self._savepointed(self._own_connection, batch)
                driver.execute(cursor, "COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cursor.execute("ROLLBACK")
                raise
        except Exception as exc:  # the database, or the commit, failed: nothing of the batch is stored
            self._release_own_connection()
            return [(False, exc)] * len(batch)
        return outcomes

    def _open_writer_connection(self) -> OwnConnection:
        """The group commit's SQLite connection, whose commits leave checkpoints to the checkpointer (started
        here, once: the relay writes, a CLI command does not need one)."""
        connection = OwnConnection.open(self.engine, self.driver)
        try:
            connection.cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            # A savepoint (each job's, once a job of the batch failed: _savepointed) keeps a statement
            # journal, the pages it changed as they were, to roll back to. By default SQLite keeps it in a
            # temporary file: created, written page by page and unlinked in every batch, ~20 pwrite calls a
            # message when every job had a savepoint, never needed after a crash (the WAL recovers). In
            # memory it holds a job's few pages (issue 8: with a savepoint per job, the writer thread's CPU
            # per message 0.24 -> 0.22 ms, ten messages at once on a 2-vCPU AMD EPYC).
            connection.cursor.execute("PRAGMA temp_store=MEMORY")
        except BaseException:
            connection.discard()
            raise
        if self._checkpointer is None:
            self._checkpointer = WalCheckpointer(self.engine, self.driver, self.checkpoint_interval)
        return connection

    def _in_turn(self, holder: CursorHolder, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """Each job in turn in the transaction under way, without a savepoint: the common case, where no
        job fails, two statements less per job (SAVEPOINT and RELEASE, each a round trip to PostgreSQL and
        a GIL hand-off on SQLite; issue 8). A job that raises (a bug: not the database's error) may have
        written part of its rows, so _JobFailed is raised for the caller to roll the transaction back and
        run the batch again with _savepointed. A database error is raised as it is."""
        outcomes: list[tuple[bool, Any]] = []
        for job in batch:
            try:
                outcomes.append((True, job.work(holder)))
            except DBAPIError:
                raise  # the database failed (locked, gone): the others would only wait for it too
            except Exception as exc:
                raise _JobFailed from exc
        return outcomes

    def _savepointed(self, holder: CursorHolder, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """Each job in a savepoint of the transaction under way; a database error is raised."""
        driver = self.driver
        cursor = driver.cursor(holder)
        outcomes: list[tuple[bool, Any]] = []
        for job in batch:
            driver.execute(cursor, SAVEPOINT)
            try:
                outcomes.append((True, job.work(holder)))
            except DBAPIError:
                raise  # the database failed (locked, gone): the others would only wait for it too
            except Exception as exc:  # a bug in this job: its savepoint is rolled back, others go on
                driver.execute(cursor, ROLLBACK_TO)
                outcomes.append((False, exc))
            driver.execute(cursor, RELEASE)
        return outcomes

    def _release_own_connection(self) -> None:
        if self._own_connection is not None:
            self._own_connection.close()
        self._own_connection = None

    def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one writing transaction (synchronously: for the CLI, tests and the worker thread)."""
        with self.write_sessions() as session, session.begin():
            return fn(session)

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one read-only transaction: on SQLite it takes no write lock, so a long report never
        holds up the relay's writes."""
        with self.sessions() as session, session.begin():
            return fn(session)

    async def run_transaction(self, fn: Callable[[Session], T]) -> T:
        """`transaction` on the store's worker thread, for code on the event loop (the HTTP endpoints)."""
        result: T = await self._run(self.transaction, fn)
        return result

    def delivered_recipients(
        self, fingerprint: str, recipient_hashes: Iterable[str]
    ) -> asyncio.Future[set[str]]:
        """Which of `recipient_hashes` an earlier attempt of this message already delivered a copy to.

        On SQLite it is read here, on the caller's thread (the event loop), if it can be without waiting:
        one indexed lookup in pages the relay keeps hot, tens of µs, where handing it to the reader thread
        and back cost 0.15 ms of every rejection under load (issue 8: waking the thread, and taking the GIL
        back from it). The first check, and any that finds SQLite busy (a recovery holding its lock) or
        fails, goes to the reader thread, which waits, reports errors as before, and (re)opens the loop's
        connection. Otherwise the read starts on the reader thread when this is called, not when it is
        awaited: the relay asks while it is still signing, which runs in OpenSSL without the GIL (issue 8,
        one-session latency).
        Only the recipients asked about are looked up: identical bytes sent to many applicants one by one
        share a fingerprint, and reading every earlier copy would grow with each of them."""
        wanted = sorted(set(recipient_hashes))
        loop = asyncio.get_running_loop()
        answer = set() if not wanted else self._read_delivered_without_waiting(fingerprint, wanted)
        if answer is not None:
            done: asyncio.Future[set[str]] = loop.create_future()
            done.set_result(answer)
            return done
        return loop.run_in_executor(self._reader, self._read_delivered, fingerprint, wanted)

    def _read_delivered_without_waiting(self, fingerprint: str, wanted: list[str]) -> set[str] | None:
        """SQLite: the retry check's answer on this thread, or None if it cannot be had at once. The
        connection is opened by the reader thread (opening one may wait for a lock), never here."""
        connection = self._loop_read_connection
        if connection is None:
            return None
        try:
            cursor = self.driver.execute(connection.cursor, *_delivered_query(fingerprint, wanted))
            return {row[0] for row in cursor.fetchall()}
        except Exception:
            self._release_loop_read_connection()
            return None

    def _release_loop_read_connection(self) -> None:
        if self._loop_read_connection is not None:
            self._loop_read_connection.discard()  # its busy_timeout is 0, which a writer must never get
        self._loop_read_connection = None

    def _read_delivered(self, fingerprint: str, wanted: list[str]) -> set[str]:
        # One statement, so one snapshot: run as it is (autocommit on SQLite; on PostgreSQL the pool's reset
        # ends the transaction psycopg began), without SQLAlchemy's BEGIN and COMMIT around it.
        statement, params = _delivered_query(fingerprint, wanted)
        if self.engine.dialect.name != "sqlite":
            with self.engine.connect() as connection:
                dbapi_connection = connection.connection.driver_connection
                assert dbapi_connection is not None
                cursor = self.driver.execute(dbapi_connection.cursor(), statement, params)
                return {row[0] for row in cursor.fetchall()}
        # SQLite: a file, no server to go away, so this thread keeps its connection instead of checking one
        # out of the pool, pinging it and resetting it for every message (a third of the check's CPU, issue
        # 8). After an error it opens a new one.
        if self._read_connection is None:
            self._read_connection = OwnConnection.open(self.engine, self.driver)
        try:
            cursor = self.driver.execute(self._read_connection.cursor, statement, params)
            answer = {row[0] for row in cursor.fetchall()}
        except DBAPIError:
            self._release_read_connection()
            raise
        if self._loop_read_connection is None:
            self._open_loop_read_connection()
        return answer

    def _open_loop_read_connection(self) -> None:
        """The connection the next checks read on, on the event loop (delivered_recipients)."""
        try:
            connection = OwnConnection.open(self.engine, self.driver)
        except Exception:
            return  # the checks keep coming to this thread, which reports what fails
        try:
            # SQLite's busy handler would sleep on the event loop: busy there means "ask the reader thread".
            connection.cursor.execute("PRAGMA busy_timeout=0")
        except Exception:
            connection.discard()
            return
        self._loop_read_connection = connection

    def _release_read_connection(self) -> None:
        if self._read_connection is not None:
            self._read_connection.close()
        self._read_connection = None

    async def record(self, records: Iterable[CopyRecord], *, mark_delivered: bool) -> int:
        """Store referral events (and, when the message was split, delivered marks); returns events added."""
        return len(await self.record_events(records, mark_delivered=mark_delivered))

    async def record_events(
        self,
        records: Iterable[CopyRecord],
        *,
        mark_delivered: bool,
        seen: SeenRejection | None = None,
        expected: ExpectedWrite | None = None,
    ) -> list[int]:
        """`record`, returning the ids of the referral events added (for the transaction's log line); with
        `seen`, the rejection is counted in the same write (one transaction per message; issue 8); with
        `expected`, this is the write that expect_write announced."""
        batch = list(records)
        now = datetime.now(UTC)

        def write(session: CursorHolder) -> list[int]:
            if seen is not None:
                self._rejection_seen(session, seen.tenant_id, seen.decorated, seen.fingerprint, now)
            return self._record_in(session, batch, mark_delivered, now)

        return await self._batched(write, expected)

    def write(
        self,
        records: Iterable[CopyRecord],
        *,
        mark_delivered: bool,
        seen: SeenRejection | None = None,
        at: datetime | None = None,
    ) -> int:
        """`record_events` for callers already off the event loop (the journal replay): a transaction per
        record, so a replay that meets other relays' writes never holds more than one applicant's lock. `at`
        is when the copies were delivered (a referral counts when it is made, not when the database came
        back); without it, now."""
        now = at or datetime.now(UTC)
        added = 0
        for record in records:
            one = functools.partial(self._record_in, records=[record], mark_delivered=mark_delivered, now=now)
            added += len(self.transaction(one))
        if seen is not None:
            self.rejection_seen(seen.tenant_id, seen.decorated, seen.fingerprint, now)
        return added

    def _record_in(
        self, session: CursorHolder, records: list[CopyRecord], mark_delivered: bool, now: datetime
    ) -> list[int]:
        driver = self.driver
        cursor = driver.cursor(session)
        created_at = driver.bind_datetime(now)
        ids: list[int] = []
        for record in records:
            if record.referral is not None:
                r = record.referral
                event = {
                    "created_at": created_at,
                    "tenant_id": r.tenant_id,
                    "token": r.token,
                    "rule_id": r.rule_id,
                    "message_id": r.message_id,
                    "recipient_hash": record.recipient_hash,
                    "recipient": r.recipient,
                    "fingerprint": record.fingerprint,
                    "next_hop_reply": record.next_hop_reply,
                }
                row = driver.execute(cursor, driver_sql.INSERT_EVENT, event).fetchone()
                if row is None:
                    continue  # the same copy was recorded by an earlier attempt of this message: once
                event_id: int = row[0]
                ledger.count_referral(
                    session,
                    tenant_id=r.tenant_id,
                    recipient_hash=record.recipient_hash,
                    event_id=event_id,
                    created_at=now,
                    window=self.dedupe_window,
                )
                ids.append(event_id)
            elif mark_delivered:
                mark = {
                    "created_at": created_at,
                    "fingerprint": record.fingerprint,
                    "recipient_hash": record.recipient_hash,
                    "next_hop_reply": record.next_hop_reply,
                }
                driver.execute(cursor, driver_sql.INSERT_DELIVERED, mark)
        return ids

    def _rejection_seen(
        self, session: CursorHolder, tenant_id: str, decorated: bool, fingerprint: str | None, now: datetime
    ) -> None:
        seen = {
            "created_at": self.driver.bind_datetime(now),
            "tenant_id": tenant_id,
            "decorated": decorated,
            "fingerprint": fingerprint,
        }
        self.driver.execute(self.driver.cursor(session), driver_sql.INSERT_SEEN, seen)

    def count_events(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count(ReferralEvent.id))) or 0)

    def rejection_seen(self, tenant_id: str, decorated: bool, fingerprint: str | None, now: datetime) -> None:
        self.transaction(lambda s: self._rejection_seen(s, tenant_id, decorated, fingerprint, now))

    async def click(
        self,
        token: str,
        *,
        method: str,
        ip: str | None,
        user_agent: str | None,
        scanner_reason: str | None,
        too_soon: timedelta,
    ) -> tracking_store.ClickResult | None:
        now = datetime.now(UTC)
        return await self.run_transaction(
            lambda s: tracking_store.record_click(
                s,
                token,
                method=method,
                ip=ip,
                user_agent=user_agent,
                now=now,
                scanner_reason=scanner_reason,
                too_soon=too_soon,
            )
        )

    async def register(self, token: str, webhook_id: str) -> tracking_store.RegistrationResult:
        now = datetime.now(UTC)
        return await self.run_transaction(
            lambda s: tracking_store.record_registration(s, token, webhook_id, now)
        )

    def close(self) -> None:
        self._executor.submit(self._release_own_connection).result()
        self._executor.shutdown(wait=True)
        if self._checkpointer is not None:  # after the writer, which starts it
            self._checkpointer.stop()
        self._reader.submit(self._release_read_connection).result()
        self._reader.shutdown(wait=True)
        self._release_loop_read_connection()  # after the reader thread, which opens it
        self.engine.dispose()


def _delivered_query(fingerprint: str, wanted: list[str]) -> tuple[str, dict[str, str]]:
    """The retry check's statement and its parameters."""
    params = {"fingerprint": fingerprint, **{f"r{i}": h for i, h in enumerate(wanted)}}
    return driver_sql.delivered_query(len(wanted)), params


@dataclass(frozen=True)
class OwnConnection:
    """A store thread's SQLite connection, kept between uses (the writer's batches, the reader's retry
    checks); `info` as a store Session's, so the driver statements take it (CursorHolder)."""

    pooled: PoolProxiedConnection
    info: dict[Any, Any]

    @classmethod
    def open(cls, engine: Engine, driver: Driver) -> OwnConnection:
        pooled = engine.raw_connection()
        assert pooled.driver_connection is not None
        cursor = pooled.driver_connection.cursor()
        return cls(pooled, {"mailrelay_driver": driver, "mailrelay_cursor": cursor})

    @property
    def cursor(self) -> Any:
        return self.info["mailrelay_cursor"]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may be broken already: that is why it is dropped
            self.pooled.close()  # back to the pool, which resets it

    def discard(self) -> None:
        """Closed for good, not back to the pool (a connection whose settings no other user may get)."""
        with contextlib.suppress(Exception):
            self.pooled.invalidate()


class WalCheckpointer:
    """Checkpoints SQLite's write-ahead log every `interval` seconds on a thread and connection of its own
    (see CHECKPOINT_INTERVAL). PASSIVE: it never waits for, nor blocks, a reader or a writer; a checkpoint
    that finds another under way (another worker's) does nothing. A failure is logged and tried again next
    time: the writer's backstop keeps the log bounded meanwhile."""

    def __init__(self, engine: Engine, driver: Driver, interval: float) -> None:
        self.engine = engine
        self.driver = driver
        self.interval = interval
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=CHECKPOINTER, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name_os_thread(CHECKPOINTER)
        connection: OwnConnection | None = None
        while not self._stop.wait(self.interval):
            try:
                if connection is None:
                    connection = OwnConnection.open(self.engine, self.driver)
                connection.cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as exc:
                if not self.failing:
                    log.warning(
                        "store: WAL checkpoint failed (%s); trying again every %.1f s", exc, self.interval
                    )
                self.failing = True
                if connection is not None:
                    connection.discard()
                connection = None
                continue
            if self.failing:
                log.info("store: WAL checkpoints work again")
            self.failing = False
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ExpectedWrite:
    """A write announced to the group commit (EventStore.expect_write): hand it in with record_events, or
    withdraw it when the message will not record (both are idempotent), or each commit waits for it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.settled = False

    def withdraw(self) -> None:
        self.store.withdraw_expected(self)


class _JobFailed(Exception):
    """A job of a batch run in turn raised: the batch is rolled back and run again, a savepoint per job."""


@dataclass(frozen=True)
class _Job:
    work: Callable[[CursorHolder], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the waiter was cancelled
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _is_conflict(exc: object) -> bool:
    """A deadlock or serialization failure (SQLSTATE 40P01, 40001): worth trying again, unlike an outage."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")
