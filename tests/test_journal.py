"""Issue 5: the database goes away during load; mail keeps flowing, every delivered copy's record waits in
the fsynced journal, and once the database is back events equal copies delivered: none lost, none doubled."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import RunningRelay, SettingsFactory
from mailrelay import journal as journal_module
from mailrelay.journal import EventJournal
from mailrelay.store import CopyRecord, EventStore, ReferralEvent, ReferralFields
from support.sinks import RecordingSink

E2E = Path(__file__).resolve().parent / "e2e"
REJECTION = (E2E / "rejection_ja_bcc_batch.eml").read_bytes()
REJECTION_EN = (E2E / "rejection_en.eml").read_bytes()
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1"


def events_in(store: EventStore) -> int:
    with store.sessions() as session:
        return int(session.scalar(select(func.count(ReferralEvent.id))) or 0)


async def test_database_down_during_load_loses_and_doubles_no_event(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink() as sink:
        relay: RunningRelay = await start_relay(make_settings(sink.port))
        good_store = relay.components.relay.store
        down = EventStore(UNREACHABLE)
        relay.components.relay.store = down  # the database fails over mid-load
        for i in range(5):
            content = REJECTION.replace(b"<e2e-bcc@", f"<e2e-bcc-{i}@".encode())
            refused, reply = await relay.send(
                "recruit@acme.co.jp", [f"a{i}@gmail.example", f"b{i}@gmail.example"], content
            )
            assert refused == {} and reply.startswith("2")
        delivered = len(sink.messages)
        journal = relay.components.relay.journal
        assert delivered == 10 and journal.backlog == 10
        assert relay.components.metrics.registry.get_sample_value("mailrelay_journal_backlog") == 10
        down.close()

        # The database is back: the replay writes every journalled record once, and again is harmless.
        relay.components.relay.store = good_store
        assert journal.replay(good_store) == 10
        assert journal.replay(good_store) == 0
    assert events_in(good_store) == delivered
    assert journal.backlog == 0


async def test_a_retry_while_the_database_is_down_uses_the_journal_and_sends_no_duplicate(
    start_relay, make_settings: SettingsFactory
) -> None:
    async with RecordingSink(refuse_recipients={}) as sink:
        relay: RunningRelay = await start_relay(make_settings(sink.port))
        relay.components.relay.store = EventStore(UNREACHABLE)
        recipients = ["a@gmail.example", "b@gmail.example"]
        await relay.send("recruit@acme.co.jp", recipients, REJECTION)
        # The sending MTA did not hear our 250 (say the connection broke) and sends the same message again.
        refused, reply = await relay.send("recruit@acme.co.jp", recipients, REJECTION)
    assert refused == {} and reply.startswith("2")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == recipients


async def test_a_retry_during_the_replay_finds_the_copy_in_the_journal_or_the_store(
    start_relay, make_settings: SettingsFactory
) -> None:
    """The retry check asks the journal and the database. A replay that writes an entry to the database and
    drops it from the journal between the two questions must not hide it from both: the applicant would get
    a second copy. Here the replay runs just after the database has answered."""
    async with RecordingSink() as sink:
        relay: RunningRelay = await start_relay(make_settings(sink.port))
        good_store = relay.components.relay.store
        down = EventStore(UNREACHABLE)
        relay.components.relay.store = down
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION_EN)  # journalled
        down.close()
        journal = relay.components.relay.journal
        assert journal.backlog == 1 and len(sink.messages) == 1
        relay.components.relay.store = good_store
        relay.components.relay.store_back()  # the database is back, as a replay would say
        # The first read goes to the store's reader thread; later ones answer at once, so the replay below
        # lands after the database's answer, wherever the relay asks it.
        await good_store.delivered_recipients("0" * 64, ["0" * 64])
        replayed: list[int] = []
        ask_store = good_store.delivered_recipients

        def ask_then_replay(fingerprint: str, hashes: Any) -> asyncio.Future[set[str]]:
            answer = ask_store(fingerprint, hashes)
            assert answer.done()
            replayed.append(journal.replay(good_store))
            return answer

        good_store.delivered_recipients = ask_then_replay  # type: ignore[method-assign]
        # The sending MTA did not hear our 250 and sends the same message again, as the replay runs.
        refused, reply = await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION_EN)
    assert refused == {} and reply.startswith("2")
    assert replayed == [1] and journal.backlog == 0
    assert len(sink.messages) == 1  # no second copy
    assert events_in(good_store) == 1


def test_journal_survives_a_restart_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.journal"
    journal = EventJournal(path)
    referral = ReferralFields(tenant_id="acme", token="tok", rule_id="ja", message_id=None, recipient=None)
    journal.append([CopyRecord("f" * 64, "r" * 64, "250 ok", referral)], mark_delivered=False)
    with open(path, "ab") as fh:
        fh.write(b'{"mark_delivered": false, "reco')  # a crash in the middle of a write
    reopened = EventJournal(path)
    assert reopened.backlog == 1 and reopened.delivered("f" * 64) == {"r" * 64}
    store = EventStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    assert reopened.replay(store) == 1
    assert events_in(store) == 1
    store.close()


async def test_after_a_store_failure_messages_go_straight_to_the_journal(
    start_relay, make_settings: SettingsFactory
) -> None:
    """A locked or silent database is not asked again for every message (each would wait out its timeout):
    the relay pauses it and journals, so mail keeps flowing at full speed; a replay ends the pause."""
    async with RecordingSink() as sink:
        relay: RunningRelay = await start_relay(make_settings(sink.port))
        down = EventStore(UNREACHABLE)
        calls: list[str] = []
        original = down.record

        async def counting_record(*args: object, **kwargs: object) -> int:
            calls.append("record")
            return await original(*args, **kwargs)  # type: ignore[arg-type]

        down.record = counting_record  # type: ignore[method-assign]
        relay.components.relay.store = down
        for i in range(4):
            content = REJECTION.replace(b"<e2e-bcc@", f"<pause-{i}@".encode())
            await relay.send("recruit@acme.co.jp", [f"a{i}@gmail.example"], content)
        assert len(calls) <= 1  # only the first message met the failing database
        assert relay.components.relay.journal.backlog == 4
        relay.components.relay.store_back()
        assert relay.components.relay.store_usable()
        down.close()
    assert len(sink.messages) == 4


async def test_an_outage_keeps_every_rejection_count_and_when_each_referral_was_made(
    start_relay, make_settings: SettingsFactory
) -> None:
    """The follow-up rate's denominator counts every rejection mail, also one relayed while the database
    was away, and a referral journalled then counts at the time it was made, not at the replay."""
    from mailrelay.store.models import LedgerEntry, RejectionSeen

    async with RecordingSink() as sink:
        relay: RunningRelay = await start_relay(make_settings(sink.port))
        good_store = relay.components.relay.store
        relay.components.relay.store = EventStore(UNREACHABLE)
        await relay.send("recruit@acme.co.jp", ["applicant@gmail.example"], REJECTION_EN)  # decorated
        other = REJECTION_EN.replace(b"Message-ID: <", b"Message-ID: <other-")  # another mail, not a retry
        await relay.send("recruit@acme.co.jp", ["archive@acme.co.jp"], other)  # no applicant: no link
        journal = relay.components.relay.journal
        assert journal.backlog == 1 and journal.rejections_waiting == 2 and journal.waiting
        relay.components.relay.store.close()
        relayed_by = datetime.now(UTC).replace(tzinfo=None)

        relay.components.relay.store = good_store
        assert journal.replay(good_store) == 1
        assert not journal.waiting
        assert journal.replay(good_store) == 0  # again: nothing, and nothing doubled
    assert len(sink.messages) == 2
    with good_store.sessions() as session:
        seen = sorted((r.tenant_id, r.decorated) for r in session.scalars(select(RejectionSeen)))
        events = list(session.scalars(select(ReferralEvent)))
        lines = list(session.scalars(select(LedgerEntry)))
    assert seen == [("acme", False), ("acme", True)]
    assert len(events) == 1 and len(lines) == 1
    assert events[0].created_at.replace(tzinfo=None) < relayed_by
    assert lines[0].created_at.replace(tzinfo=None) < relayed_by


def test_a_journal_line_from_before_the_rejection_count_is_replayed_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "events.journal"
    line = (
        b'{"mark_delivered":false,"records":[{"fingerprint":"ff","recipient_hash":"rr",'
        b'"next_hop_reply":"250 ok","referral":{"tenant_id":"acme","token":"tok","rule_id":"ja",'
        b'"message_id":null,"recipient":null}}]}\n'
    )
    path.write_bytes(line)
    journal = EventJournal(path)
    assert journal.backlog == 1 and journal.rejections_waiting == 0
    store = EventStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    assert journal.replay(store) == 1
    assert events_in(store) == 1
    store.close()


# -- one journal shared by the workers of `serve --workers N` ----------------------------------------------


def copy_record(n: int) -> CopyRecord:
    referral = ReferralFields("acme", token=f"tok{n}", rule_id="ja", message_id=None, recipient=None)
    return CopyRecord(f"{n:064x}", "r" * 64, "250 ok", referral)


def sqlite_store(tmp_path: Path) -> EventStore:
    store = EventStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    return store


def hold_writes(store: EventStore) -> tuple[threading.Event, threading.Event]:
    """Make the store's writes for a replay wait: the first sets `writing`, and each waits for `release`."""
    write = store.write
    writing, release = threading.Event(), threading.Event()

    def held_write(*args: Any, **kwargs: Any) -> int:
        writing.set()
        release.wait(30)
        return write(*args, **kwargs)

    store.write = held_write  # type: ignore[method-assign]
    return writing, release


def test_a_replay_in_one_worker_keeps_what_another_appends_meanwhile(tmp_path: Path) -> None:
    """Worker A replays while worker B journals a copy it just delivered: B's entry must outlive A's
    dropping of what it wrote (it lands after what A read, and A keeps it)."""
    path = tmp_path / "events.journal"
    worker_a, worker_b = EventJournal(path), EventJournal(path)
    worker_a.append([copy_record(1)], mark_delivered=False)
    store = sqlite_store(tmp_path)
    write = store.write
    appending: list[threading.Thread] = []
    appended = threading.Event()

    def write_while_b_appends(*args: Any, **kwargs: Any) -> int:
        written = write(*args, **kwargs)
        thread = threading.Thread(target=lambda: (worker_b.append([copy_record(2)], False), appended.set()))
        thread.start()
        appending.append(thread)
        appended.wait(0.3)  # B appends now if nothing stops it; A then empties the journal
        return written

    store.write = write_while_b_appends  # type: ignore[method-assign]
    assert worker_a.replay(store) == 1
    appending[0].join(10)
    assert appended.is_set()
    store.write = write  # type: ignore[method-assign]
    assert worker_a.backlog == 1 and worker_a.delivered(f"{2:064x}") == {"r" * 64}
    assert worker_b.replay(store) == 1
    assert events_in(store) == 2
    store.close()


def test_an_append_does_not_wait_for_a_replays_database_writes(tmp_path: Path) -> None:
    """A long backlog takes a while to write; meanwhile another worker's delivered copy is journalled at once
    (its sender waits for that fsync), not after the whole backlog."""
    path = tmp_path / "events.journal"
    worker_a, worker_b = EventJournal(path), EventJournal(path)
    worker_a.append([copy_record(1)], mark_delivered=False)
    store = sqlite_store(tmp_path)
    writing, release = hold_writes(store)
    replayed: list[int] = []
    replay = threading.Thread(target=lambda: replayed.append(worker_a.replay(store)))
    replay.start()
    assert writing.wait(10)
    appended = threading.Event()
    append = threading.Thread(target=lambda: (worker_b.append([copy_record(2)], False), appended.set()))
    append.start()
    try:
        assert appended.wait(10), "the append waited for the replay's database writes"
    finally:
        release.set()
        replay.join(10)
        append.join(10)
    assert replayed == [1]
    # What the replay wrote is gone from the journal; what was appended meanwhile waits for the next one.
    assert worker_a.backlog == 1 and worker_a.delivered(f"{1:064x}") == set()
    assert worker_b.delivered(f"{2:064x}") == {"r" * 64}
    assert worker_b.replay(store) == 1 and events_in(store) == 2
    assert path.read_bytes() == b""
    store.close()


class ReadSizes(io.BytesIO):
    """A file that notes how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_a_replay_reads_and_writes_the_journal_a_block_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long backlog is never read, nor decoded, whole: its high-water mark stayed in the worker's memory
    (issue 8 soak). Lines cut by a block's end are put together again, and a torn last line is skipped."""
    monkeypatch.setattr(journal_module, "REPLAY_BLOCK", 7)  # every line spans blocks
    path = tmp_path / "events.journal"
    journal = EventJournal(path)
    for n in range(1, 41):
        journal.append([copy_record(n)], mark_delivered=False)
    with path.open("ab") as fh:
        fh.write(b'{"mark_delivered":fal')  # a crash mid-append: never fsynced, never answered 250
    size = path.stat().st_size
    reader = ReadSizes(path.read_bytes())
    lines = list(journal_module._lines(reader, size))
    assert b"\n".join(lines) == path.read_bytes() and max(reader.asked) == 7
    store = sqlite_store(tmp_path)
    assert journal.replay(store) == 40 and events_in(store) == 40
    assert path.read_bytes() == b"" and journal.backlog == 0
    store.close()


JOURNAL_THREADS = ("mailrelay-jn", "mailrelay-jn-rp")


def journal_threads() -> Counter[str]:
    """This process's journal threads, by the name the kernel has for them."""
    names: Counter[str] = Counter()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            name = task.joinpath("comm").read_text().strip()
            if name in JOURNAL_THREADS:
                names[name] += 1
    return names


async def test_the_relays_appends_and_replays_run_on_the_journals_own_threads(tmp_path: Path) -> None:
    """One thread appends and one replays (`top -H`: mailrelay-jn, mailrelay-jn-rp), not the event loop's
    default executor, whose threads each kept the memory of the replays they ran (issue 8 soak); and a
    worker's append does not wait for its own replay's database writes."""
    # Other tests' relays may have left theirs, some of them on their way out: counted once they hold still.
    before = journal_threads()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if (now := journal_threads()) == before:
            break
        before = now
    journal = EventJournal(tmp_path / "events.journal")
    journal.append([copy_record(1)], mark_delivered=False)
    store = sqlite_store(tmp_path)
    writing, release = hold_writes(store)
    replaying = asyncio.ensure_future(journal.replay_off_loop(store))
    try:
        assert await asyncio.to_thread(writing.wait, 10)
        appending = journal.append_off_loop([copy_record(2)], False, None, datetime.now(UTC))
        await asyncio.wait_for(appending, 10)
        assert journal_threads() == before + Counter(JOURNAL_THREADS)
    finally:
        release.set()
    assert await replaying == 1
    assert journal.backlog == 1 and journal.delivered(f"{2:064x}") == {"r" * 64}
    journal.close()
    for _ in range(100):  # joined, each OS thread still takes a moment to go
        if journal_threads() == before:
            break
        await asyncio.sleep(0.01)
    assert journal_threads() == before
    # A transaction that outlived serve's shutdown grace still has its delivered copy journalled.
    await journal.append_off_loop([copy_record(3)], False, None, datetime.now(UTC))
    assert journal.delivered(f"{3:064x}") == {"r" * 64} and journal_threads() == before
    store.close()


def test_a_retry_on_another_worker_sees_what_the_first_journalled(tmp_path: Path) -> None:
    path = tmp_path / "events.journal"
    worker_a, worker_b = EventJournal(path), EventJournal(path)
    worker_a.append([copy_record(1)], mark_delivered=False)
    assert worker_b.delivered(f"{1:064x}") == {"r" * 64}
    assert worker_b.backlog == 1 and worker_b.waiting
    store = sqlite_store(tmp_path)
    assert worker_b.replay(store) == 1
    store.close()
    assert not worker_a.waiting and worker_a.delivered(f"{1:064x}") == set()


def test_a_line_torn_by_a_crash_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "events.journal"
    path.write_bytes(b'{"mark_delivered":false,"reco')  # the crash: no line end, never fsynced, never 250
    EventJournal(path).append([copy_record(1)], mark_delivered=False)
    reopened = EventJournal(path)
    assert reopened.backlog == 1
    store = sqlite_store(tmp_path)
    assert reopened.replay(store) == 1 and events_in(store) == 1
    store.close()


_APPENDER = """
import sys
from pathlib import Path
from mailrelay import journal as journal_module
from mailrelay.journal import EventJournal
from mailrelay.store import CopyRecord, ReferralFields

journal = EventJournal(Path(sys.argv[1]))
for n in range(int(sys.argv[2]), int(sys.argv[3])):
    referral = ReferralFields("acme", token=f"tok{n}", rule_id="ja", message_id=None, recipient=None)
    journal.append([CopyRecord(f"{n:064x}", "r" * 64, "250 ok", referral)], mark_delivered=False)
"""


def test_two_processes_journal_and_replay_at_once_and_lose_nothing(tmp_path: Path) -> None:
    """Real processes, as `serve --workers 2` runs them: two append while this one replays in a loop."""
    path = tmp_path / "events.journal"
    store = sqlite_store(tmp_path)
    appenders = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), str(first), str(first + 150)])
        for first in (0, 1000)
    ]
    replayer = EventJournal(path)
    replayed = 0
    while any(p.poll() is None for p in appenders):
        replayed += replayer.replay(store)
    assert [p.returncode for p in appenders] == [0, 0]
    replayed += replayer.replay(store)
    assert replayed == 300 and events_in(store) == 300
    store.close()


def test_a_worker_sees_new_entries_after_replays_gave_the_journal_its_old_inode_again(tmp_path: Path) -> None:
    """Each replay replaces the journal by a new file, and ext4 gives a freed inode to the next file made:
    two replays by worker A later, the journal had the inode worker B last read, at the same size, and B
    took the new entry for what it had read (a retry on B sent the applicant a second copy; its backlog
    metric counted entries long replayed)."""
    path = tmp_path / "events.journal"
    worker_a, worker_b = EventJournal(path), EventJournal(path)
    store = sqlite_store(tmp_path)
    worker_a.append([copy_record(10)], mark_delivered=False)
    assert worker_b.backlog == 1
    seen_by_b = path.stat().st_ino
    assert worker_a.replay(store) == 1  # a new, empty journal
    for n in range(11, 20):  # until the inode comes back, if this filesystem reuses it
        if path.stat().st_ino == seen_by_b:
            break
        worker_a.append([copy_record(n)], mark_delivered=False)
        assert worker_a.replay(store) == 1
    worker_a.append([copy_record(20)], mark_delivered=False)  # the same length as what B read
    assert worker_b.delivered(f"{20:064x}") == {"r" * 64}
    assert worker_b.backlog == 1 and worker_b.delivered(f"{10:064x}") == set()
    store.close()
    worker_a.close()
    worker_b.close()


_APPEND_WITH_LITTLE_ROOM = """
import resource
import sys
from pathlib import Path
from mailrelay.journal import EventJournal
from mailrelay.store import CopyRecord, ReferralFields

path = Path(sys.argv[1])
journal = EventJournal(path)
# Room for a few bytes more: the file size limit cuts a write short as a full disk does.
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, resource.RLIM_INFINITY))
referral = ReferralFields("acme", token="tok2", rule_id="ja", message_id=None, recipient=None)
try:
    journal.append([CopyRecord(f"{2:064x}", "r" * 64, "250 ok", referral)], mark_delivered=False)
except OSError as exc:
    print("refused:", exc.strerror)
else:
    print("journalled")
"""


def test_an_append_cut_short_by_a_full_disk_is_an_error_not_a_journalled_entry(tmp_path: Path) -> None:
    """A regular file takes a write short when the space runs out: the entry was half written, and the
    relay answered 250 as if it were journalled (no `journal write failed` log); its replay skipped it."""
    path = tmp_path / "events.journal"
    EventJournal(path).append([copy_record(1)], mark_delivered=False)
    child = subprocess.run(
        [sys.executable, "-c", _APPEND_WITH_LITTLE_ROOM, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.startswith("refused:"), child.stdout + child.stderr
    # What the cut entry left behind does not spoil the next one.
    journal = EventJournal(path)
    journal.append([copy_record(3)], mark_delivered=False)
    assert journal.backlog == 2
