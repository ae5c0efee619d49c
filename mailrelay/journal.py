"""The local append-only journal of delivered copies that could not be written to the database yet."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from mailrelay.store import CopyRecord, EventStore, ReferralFields, SeenRejection
from mailrelay.store.events import name_os_thread

log = logging.getLogger("mailrelay.journal")

# The journal's threads, as `top -H` shows them (see mailrelay.store.events for the store's).
APPENDER = "mailrelay-jn"
REPLAYER = "mailrelay-jn-rp"


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One message's records that wait for the database: its delivered copies, whether the rejection is
    counted (the follow-up rate's denominator, issue 6) and when the copies were delivered."""

    records: list[CopyRecord]
    mark_delivered: bool
    seen: SeenRejection | None = None
    at: datetime | None = None  # None in lines written before it was kept: replayed as "now"


def _encode(entry: JournalEntry) -> bytes:
    line: dict[str, Any] = {
        "mark_delivered": entry.mark_delivered,
        "records": [dataclasses.asdict(r) for r in entry.records],
    }
    if entry.seen is not None:
        line["seen"] = dataclasses.asdict(entry.seen)
    if entry.at is not None:
        line["at"] = entry.at.isoformat()
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _decode(line: bytes) -> JournalEntry:
    entry: dict[str, Any] = json.loads(line)
    records = []
    for item in entry["records"]:
        referral = item.pop("referral")
        records.append(CopyRecord(**item, referral=ReferralFields(**referral) if referral else None))
    seen = entry.get("seen")
    at = entry.get("at")
    return JournalEntry(
        records,
        bool(entry["mark_delivered"]),
        SeenRejection(**seen) if seen else None,
        datetime.fromisoformat(at) if at else None,
    )


@dataclasses.dataclass
class _View:
    """What this process has read of the journal file with inode `inode`: its whole lines up to `offset`.
    `held` is a descriptor of that file, kept open so that its inode is not freed while the view is in use:
    ext4 gives a freed inode to the next file made, so two replays later the journal could have this inode
    again, and the new file's entries were taken for what this view had read."""

    inode: int = -1
    held: int = -1
    offset: int = 0
    delivered: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # fingerprint → hashes
    backlog: int = 0  # delivered copies waiting (the metric mailrelay_journal_backlog)
    rejections: int = 0  # rejections whose count waits, with or without copies

    def release(self) -> None:
        if self.held != -1:
            os.close(self.held)
            self.held = -1


class EventJournal:
    """When the database is down, locked or failing over, a delivered copy's record is appended here and
    fsynced before the sender hears 250 (issue 5: 0 events lost); a background task writes the entries to the
    database when it is back. Writing twice is harmless: the store counts a copy once (unique keys).

    The workers of `serve --workers N` share the one file: appends hold an flock on a lock file beside it
    (the journal itself is replaced by a replay), and so does a replay while it reads the journal and while it
    drops what it wrote, so a replay never drops another worker's entry, and each worker reads what the
    others appended before it answers a retry. The replay's database writes hold only a second lock, which
    keeps replays one at a time: an append never waits for a long backlog to be written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # This process's threads take the threading locks; the flocks on the lock files order the processes.
        self._lock = threading.Lock()
        self._lock_path = path.with_name(path.name + ".lock")
        self._replay_lock = threading.Lock()
        self._replay_lock_path = path.with_name(path.name + ".replay.lock")
        self._view_lock = threading.Lock()
        self._view = _View()
        self._catch_up(warn=True)
        # The relay's appends and replays each run on one thread of the journal's own, not on the event
        # loop's default executor: appends are one at a time under the lock anyway, and every thread that
        # ran a replay kept the high-water mark of its memory (the entries it read, the database
        # connection's page cache) in an allocator arena of its own, so that each journalling episode
        # that fell on another thread added a step to the worker's RSS (issue 8 soak). A thread of its own
        # for replays keeps appends from waiting behind one.
        self._appender = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=APPENDER, initializer=name_os_thread, initargs=(APPENDER,)
        )
        self._replayer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=REPLAYER, initializer=name_os_thread, initargs=(REPLAYER,)
        )

    @property
    def backlog(self) -> int:
        return self._catch_up().backlog

    @property
    def rejections_waiting(self) -> int:
        return self._catch_up().rejections

    @property
    def waiting(self) -> bool:
        view = self._catch_up()
        return bool(view.backlog or view.rejections)

    def delivered(self, fingerprint: str) -> set[str]:
        return set(self._catch_up().delivered.get(fingerprint, ()))

    def _catch_up(self, *, warn: bool = False) -> _View:
        """Read the whole lines appended since the last look, by any worker; a replay's new (empty) file
        starts the view again. One stat when nothing changed: a decorated message asks every time."""
        with self._view_lock:
            view = self._view
            try:
                status = os.stat(self.path)
            except FileNotFoundError:
                if view.inode != -1:
                    view.release()
                    self._view = view = _View()
                return view
            if status.st_ino == view.inode and status.st_size == view.offset:
                return view
            with open(self.path, "rb") as fh:
                status = os.fstat(fh.fileno())  # a replay may have replaced the file since the stat
                if status.st_ino != view.inode or status.st_size < view.offset:
                    view.release()
                    view = _View(inode=status.st_ino, held=os.dup(fh.fileno()))
                fh.seek(view.offset)
                data = fh.read()
            # A line still being written has no line end yet: it is read the next time.
            whole = data[: data.rfind(b"\n") + 1]
            for entry in _decoded(whole.split(b"\n"), self.path, warn):
                for record in entry.records:
                    view.delivered.setdefault(record.fingerprint, set()).add(record.recipient_hash)
                    view.backlog += 1
                if entry.seen is not None:
                    view.rejections += 1
            view.offset += len(whole)
            self._view = view
            return view

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The journal file's lock: appends, and a replay's read and drop."""
        return _flocked(self._lock, self._lock_path)

    def append(
        self,
        records: list[CopyRecord],
        mark_delivered: bool,
        seen: SeenRejection | None = None,
        at: datetime | None = None,
    ) -> None:
        line = _encode(JournalEntry(records, mark_delivered, seen, at))
        with self._exclusive():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A line cut by a crash (never fsynced, so never answered 250) must not run into
                    # this one: both would be one unreadable line.
                    line = b"\n" + line
                # A regular file takes a write short when the space runs out (write(2)), and the next
                # write raises ENOSPC: an entry half written must fail, not be answered 250 as journalled.
                rest = memoryview(line)
                while rest:
                    rest = rest[os.write(fd, rest) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        self._catch_up()

    async def append_off_loop(
        self, records: list[CopyRecord], mark_delivered: bool, seen: SeenRejection | None, at: datetime
    ) -> None:
        """`append` on the journal's appending thread, for the relay on the event loop."""
        append = functools.partial(self.append, records, mark_delivered, seen, at)
        try:
            appended = asyncio.get_running_loop().run_in_executor(self._appender, append)
        except RuntimeError:
            # Closed: a transaction that outlived serve's shutdown grace delivered its copies. Their record
            # is kept all the same, on the loop's own thread.
            append()
            return
        await appended

    async def replay_off_loop(self, store: EventStore) -> int:
        """`replay` on the journal's replaying thread."""
        replay = functools.partial(self.replay, store)
        written: int = await asyncio.get_running_loop().run_in_executor(self._replayer, replay)
        return written

    def close(self) -> None:
        """Wait for an append or a replay under way; the journal's threads end (a later append runs on
        its caller's thread)."""
        self._appender.shutdown(wait=True)
        self._replayer.shutdown(wait=True)
        with self._view_lock:
            self._view.release()
            self._view = _View()  # a later append reads the journal afresh

    def replay(self, store: EventStore) -> int:
        """Write every journalled entry to the database; on success what was written is dropped from the
        journal. Returns the number of records written (0 when there was nothing to do); raises when the
        database still fails."""
        written = 0
        with _flocked(self._replay_lock, self._replay_lock_path):
            # Only a replay replaces the file, and replays are one at a time: what is opened here stays the
            # journal until this replay drops what it wrote.
            try:
                fh = open(self.path, "rb")  # noqa: SIM115 (the with below closes it)
            except FileNotFoundError:
                return 0
            with fh:
                with self._exclusive():  # no append is half written
                    size = os.fstat(fh.fileno()).st_size
                # Appends go on while the entries are written: they land after `size`, and are kept below.
                # The entries are read and written a block at a time: a long backlog read whole, and decoded
                # whole, set a high-water mark of the replaying thread's memory that stayed (issue 8 soak).
                for entry in _decoded(_lines(fh, size), self.path, warn=True):
                    store.write(
                        entry.records, mark_delivered=entry.mark_delivered, seen=entry.seen, at=entry.at
                    )
                    written += len(entry.records)
            if size:
                with self._exclusive():
                    self._drop_written(size)
        self._catch_up()
        return written

    def _drop_written(self, written: int) -> None:
        """Replace the journal by what was appended after its first `written` bytes (all in the database
        now). The rest is fsynced before the rename (atomic, as queue managers do), so a crash leaves either
        the old journal, whose entries are then written twice (harmless: the store counts a copy once), or
        the new one, never a journal without an entry whose sender heard 250."""
        with open(self.path, "rb") as fh:
            fh.seek(written)
            rest = fh.read()
        rest_path = self.path.with_suffix(".tmp")
        with open(rest_path, "wb") as fh:
            fh.write(rest)
            if rest:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(rest_path, self.path)


@contextlib.contextmanager
def _flocked(lock: threading.Lock, lock_path: Path) -> Iterator[None]:
    with lock:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the flock


# How much of the journal a replay reads at a time.
REPLAY_BLOCK = 1 << 16


def _lines(fh: BinaryIO, size: int) -> Iterator[bytes]:
    """The lines of the journal's first `size` bytes, read a block at a time; the last one may be torn."""
    rest = b""
    while size > 0:
        block = fh.read(min(REPLAY_BLOCK, size))
        if not block:
            break
        size -= len(block)
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    yield rest


def _decoded(lines: Iterable[bytes], path: Path, warn: bool) -> Iterator[JournalEntry]:
    for line in lines:
        if not line:
            continue  # the line end an append put after a torn line (see append)
        try:
            entry = _decode(line)
        except (ValueError, KeyError, TypeError):
            # A line cut by a crash mid-write was never fsynced, so its sender never heard 250.
            if warn:
                log.warning("skipping a torn journal line in %s", path)
            continue
        yield entry


async def replay_forever(
    journal: EventJournal,
    store: EventStore,
    interval: float = 5.0,
    on_success: Callable[[], None] | None = None,
) -> None:
    """Retry the journal every `interval` seconds while it is not empty; `on_success` after a replay."""
    while True:
        await asyncio.sleep(interval)
        if not journal.waiting:
            continue
        try:
            written = await journal.replay_off_loop(store)
        except Exception as exc:
            log.warning(
                "database still unavailable, %d journalled record(s) wait: %s",
                journal.backlog,
                type(exc).__name__,
            )
        else:
            if written:  # 0: another worker replayed the shared journal first
                log.info("wrote %d journalled record(s) to the database", written)
            if on_success is not None:
                on_success()
