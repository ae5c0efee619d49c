"""`python -m bench`: floor, mailrelay and Postfix side by side on one machine, then the stage timings."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bench import ablation, load, micro, procs, report, sampling, servers
from bench.load import PACED_RATE
from bench.messages import RECIPIENT, SENDER, SHAPES, wire_bytes, write_all
from bench.ports import free_port
from mailrelay.store.events import CHECKPOINTER, READER, WRITER

# How many counted runs' worth of messages the py-spy run of each message sends.
SAMPLED_RUNS = 4
# The progress lines pad every contestant's name to the longest one's, so their figures line up.
NAME_WIDTH = max(len(name) for name in report.CONTESTANTS)

# mailrelay's store threads by their kernel names: their CPU is the store's, the rest its event loops'.
STORE_THREADS = (WRITER, READER, CHECKPOINTER)


@dataclass
class Cell:
    """Several runs of one contestant, one message, one concurrency."""

    contestant: str  # "floor", "mailrelay (other mail)", "mailrelay (rejection)", "postfix"
    shape: str
    sessions: int
    tool: str  # "smtp-source" (throughput), "latency-client" (closed loop) or "latency-paced" (PACED_RATE)
    rates: list[float] = field(default_factory=list)  # msg/s per run
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per message per run
    # smtp-source's and smtp-sink's CPU per message per run: what the 2 cores give the load, not the server
    load_cpu_ms: list[float] = field(default_factory=list)
    # mailrelay: CPU per message of its store threads (writer and retry-check reader), all workers
    store_cpu_ms: list[float] = field(default_factory=list)
    # cores that no process and no kernel work used during each run (smtp-source runs; /proc/stat idle and
    # iowait): tells a server that waits from one whose cores went to the kernel's own work (issue 8)
    idle_cores: list[float] = field(default_factory=list)
    # cores the hypervisor gave to others during each run (smtp-source runs; /proc/stat steal): on a shared
    # host, what none of the 2 cores' figures above can show; empty in runs from before (issue 8)
    stolen_cores: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    peak_rss: int = 0
    # mailrelay at the fewest sessions, and in the paced runs: each of servers.HISTOGRAMS' time per message,
    # ms (its own metrics)
    stage_ms: dict[str, float] = field(default_factory=dict)
    # mailrelay's paced runs: how many messages spent over servers.SLOW_STAGE_SECONDS in each stage (the tail)
    stage_slow: dict[str, float] = field(default_factory=dict)
    messages: int = 0
    errors: int = 0
    detail: str = ""

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else 0.0


@dataclass
class Ablated:
    """Runs of one message at 10 sessions through a relay of the ablation phase: `variant` is "rejection"
    or "other mail" (an unchanged relay), an ablation.VARIANTS key (rejections, that stage taken out), or
    "floor" (the bare proxy in the same rounds; absent from runs before it was added)."""

    shape: str
    variant: str
    sessions: int
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per message, run by run (rounds align)
    rates: list[float] = field(default_factory=list)
    # cores that no process and no kernel work used during each run, as Cell.idle_cores: a stage can cost
    # the relay waiting as well as CPU (issue 8: the record's group commit); empty in runs from before
    idle_cores: list[float] = field(default_factory=list)
    # as Cell.stolen_cores: kept in RESULTS.json for whoever weighs these rounds; the report reads steal from
    # the throughput runs
    stolen_cores: list[float] = field(default_factory=list)
    messages: int = 0
    errors: int = 0
    detail: str = ""


@dataclass
class Memory:
    contestant: str
    idle_rss: int
    sessions: int
    loaded_rss: int

    @property
    def per_session(self) -> float:
        return (self.loaded_rss - self.idle_rss) / self.sessions


@dataclass
class Soak:
    seconds: float
    messages: int
    samples: list[tuple[float, int]]


@dataclass
class Profile:
    runs: int
    duration: float  # target seconds per throughput run
    sessions: tuple[int, ...]
    micro_budget: float
    soak: float
    memory_sessions: int
    # Seconds per paced latency run: at PACED_RATE, 1,500 messages, whose p99 (percentile()) is the 16th
    # slowest. With 500 it was the 6th, and moved by +-10 ms from run to run on a noisy machine, wider than
    # the target it is read against (issue 8). Earlier RESULTS.json files lack it: theirs was 5.
    paced_seconds: float = 5.0


DEFAULT_PROFILE = Profile(
    runs=3,
    duration=2.5,
    sessions=(1, 10, 50),
    micro_budget=1.0,
    soak=30,
    memory_sessions=40,
    paced_seconds=15.0,
)
PROFILES = {
    "default": DEFAULT_PROFILE,
    # The same runs and concurrencies, each shorter, and no soak.
    "quick": replace(DEFAULT_PROFILE, duration=0.4, micro_budget=0.3, soak=0, paced_seconds=0.8),
    "smoke": Profile(runs=1, duration=0.0, sessions=(2,), micro_budget=0.02, soak=0, memory_sessions=0),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Entry:
    """A contestant as the runs address it: its server, and whether it is sent the rejection variant."""

    server: servers.Server
    contestant: str
    rejection: bool


def errors_said(run: Cell | Ablated) -> str:
    """What a progress line adds for runs that failed: their count and the first failure's detail."""
    return f"  ERRORS {run.errors}: {run.detail}" if run.errors else ""


T = TypeVar("T")


def alternating(contestants: list[T], round_: int) -> list[T]:
    """Round `round_`'s order of runs: as listed, reversed every other round, so that every contestant runs
    in each round beside the others (the machine's drift reaches all alike: ratios of runs side by side)
    and none always follows the same one (what a run leaves behind, Postfix's last deliveries or a
    store's checkpoint, falls on each alike)."""
    return contestants if round_ % 2 == 0 else contestants[::-1]


class Bench:
    # The contestants' runs alternate round by round (_contestants); a Recorded run says whether its did.
    side_by_side = True

    def __init__(self, args: argparse.Namespace, profile: Profile, workdir: Path) -> None:
        self.args = args
        self.profile = profile
        self.workdir = workdir
        self.messages = write_all(workdir / "messages")
        self.cells: list[Cell] = []
        self.memory: list[Memory] = []
        self.soak: Soak | None = None
        self.notes: list[str] = []
        self.samples: list[sampling.Sampled] = []
        self.ablated: list[Ablated] = []
        self.sink_pid = 0  # the next hop's process, whose CPU counts as load (set by run)
        self.tmpfs_state: Path | None = None  # the control relay's state directory, removed at the end

    def say(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    def count_for(self, rate: float, sessions: int) -> int:
        if self.args.smoke:
            return 2 * sessions
        return max(3 * sessions, round(rate * self.profile.duration))

    @property
    def target_sessions(self) -> int:
        """The targets' concurrency, where the extra runs (py-spy, ablation) are made: 10, or the most run."""
        return 10 if 10 in self.profile.sessions else max(self.profile.sessions)

    def count_like(self, contestant: str, shape: str, sessions: int) -> int:
        """Messages for a run as long as a counted run of that contestant, message and sessions."""
        counted = next(
            (c for c in self.cells if (c.contestant, c.shape, c.sessions) == (contestant, shape, sessions)),
            None,
        )
        return self.count_for(counted.median(counted.rates) if counted else 0.0, sessions)

    def unique(self, message: Path, tag: str) -> Path:
        """A copy of `message` whose Message-ID carries `tag`: smtp-source sends one file's bytes every
        time, and a Message-ID per run keeps the relay's dedupe lookups (by sender + bytes) to its run."""
        path = self.workdir / "messages" / f"run-{message.name}"
        path.write_bytes(message.read_bytes().replace(b"<bench-", f"<bench-{tag}-".encode(), 1))
        return path

    def _drain(self, server: servers.Server, timeout: float = 120) -> bool:
        """Postfix answers 250 when the mail is queued; it has relayed it once its queue is empty again."""
        deadline = time.monotonic() + timeout
        while server.queued() and time.monotonic() < deadline:
            time.sleep(0.02)
        return server.queued() == 0

    def throughput(self, entries: list[Entry]) -> None:
        """Every message and concurrency through every contestant, their runs side by side (alternating)."""
        for shape in SHAPES:
            for sessions in self.profile.sessions:
                for cell in self._throughput_cells(entries, shape.name, sessions):
                    self.cells.append(cell)
                    self.say(
                        f"{cell.contestant:{NAME_WIDTH}} {shape.name:17} {sessions:3} sessions: "
                        f"{cell.median(cell.rates):8.1f} msg/s  {cell.median(cell.cpu_ms):6.2f} ms CPU/msg"
                        + errors_said(cell)
                    )

    def _throughput_cells(self, entries: list[Entry], shape: str, sessions: int) -> list[Cell]:
        cells = {e.contestant: Cell(e.contestant, shape, sessions, "smtp-source") for e in entries}
        rates = dict.fromkeys(cells, 0.0)
        stage_seconds: dict[str, dict[str, float]] = {name: {} for name in cells}
        # A warm-up run each (not counted) that also estimates the rate, so that each counted run lasts
        # about `duration` seconds whatever the contestant's speed.
        if not self.args.smoke:
            for e in entries:
                message = self.messages[shape, e.rejection]
                warm = load.smtp_source(e.server.port, message, SENDER, RECIPIENT, sessions, 3 * sessions)
                self._drain(e.server)
                rates[e.contestant] = warm.messages / warm.seconds
        for run in range(self.profile.runs):
            for e in alternating(entries, run):
                name = e.contestant
                rates[name] = self._throughput_run(e, cells[name], rates[name], run, stage_seconds[name])
        for name, cell in cells.items():
            cell.stage_ms = {k: v / cell.messages * 1000 for k, v in stage_seconds[name].items()}
        return list(cells.values())

    def _throughput_run(
        self, entry: Entry, cell: Cell, rate: float, run: int, stage_seconds: dict[str, float]
    ) -> float:
        """One counted smtp-source run into `cell`, sized from `rate`; returns its msg/s. At the fewest
        sessions mailrelay's own histograms split its time (report: "1 session: where a message's time
        goes"): read around each run, as the other contestants' runs come between, into `stage_seconds`."""
        server = entry.server
        count = self.count_for(rate, cell.sessions)
        unique = self.unique(self.messages[cell.shape, entry.rejection], f"{cell.sessions}-{run}")
        timed = bool(server.metrics_ports) and cell.sessions == min(self.profile.sessions)
        sums = servers.histogram_sums(server.metrics_ports) if timed else {}
        sampler = procs.RssSampler(server.root_pid).start()
        try:
            cpu0 = procs.cpu_seconds(server.root_pid)
            store0 = procs.thread_cpu_seconds(server.root_pid, STORE_THREADS)
            load0 = procs.cpu_seconds(self.sink_pid) + procs.children_cpu_seconds()
            machine0 = procs.machine_seconds()
            started = time.perf_counter()
            result = load.smtp_source(server.port, unique, SENDER, RECIPIENT, cell.sessions, count)
            if not self._drain(server):
                result.errors += 1
                result.detail = "postfix did not deliver everything within 120 s"
            seconds = time.perf_counter() - started
            idle, stolen = procs.machine_seconds().since(machine0)
            cpu = procs.cpu_seconds(server.root_pid) - cpu0
            store = procs.thread_cpu_seconds(server.root_pid, STORE_THREADS) - store0
            load_cpu = procs.cpu_seconds(self.sink_pid) + procs.children_cpu_seconds() - load0
        finally:
            sampler.stop()
        cell.peak_rss = max(cell.peak_rss, sampler.peak)
        if server.name == "mailrelay":
            cell.store_cpu_ms.append(store / count * 1000)
        if timed:
            after = servers.histogram_sums(server.metrics_ports)
            for key in after:
                stage_seconds[key] = stage_seconds.get(key, 0.0) + after[key] - sums[key]
        cell.load_cpu_ms.append(load_cpu / count * 1000)
        cell.idle_cores.append(idle / seconds)
        cell.stolen_cores.append(stolen / seconds)
        cell.rates.append(count / seconds)
        cell.cpu_ms.append(cpu / count * 1000)
        cell.messages += count
        cell.errors += result.errors
        cell.detail = cell.detail or result.detail
        return count / seconds

    def sample(self, server: servers.Server, contestant: str, rejection: bool) -> None:
        """One more run of each message at 10 sessions (the targets' concurrency), not counted, with py-spy
        sampling every worker: the report's split of the event loops' time by stage."""
        why = sampling.unavailable()
        if why is not None:
            if not any(note.startswith("Profile:") for note in self.notes):
                self.notes.append(f"Profile: not taken, {why}.")
            return
        sessions = self.target_sessions
        workers = [pid for pid in procs.tree(server.root_pid) if pid != server.root_pid]
        for shape in SHAPES:
            # Four times a counted run's length: a stage of 0.05 ms per message is then about a hundred
            # samples, not a couple of dozen.
            count = SAMPLED_RUNS * self.count_like(contestant, shape.name, sessions)
            try:
                sampler = sampling.Sampler(workers, self.workdir)
                try:
                    time.sleep(0.3)  # py-spy attaches before the first message
                    result = load.smtp_source(
                        server.port, self.messages[shape.name, rejection], SENDER, RECIPIENT, sessions, count
                    )
                finally:
                    counts = sampler.stop()
            except (OSError, RuntimeError) as exc:  # not allowed to read the workers (ptrace), say
                self.notes.append(f"Profile: {contestant}, {shape.name}: not taken, {exc}")
                continue
            sampled = sampling.Sampled(
                contestant, shape.name, sessions, count, sampling.per_message(counts, count)
            )
            self.samples.append(sampled)
            self.say(
                f"{contestant:{NAME_WIDTH}} {shape.name:17} {sessions:3} sessions, sampled: "
                f"{sampled.total_ms:6.2f} ms/msg holding the GIL"
                + (f"  ERRORS: {result.detail}" if result.errors else "")
            )

    def ablate(self, sink_port: int) -> None:
        """A rejection's stages taken out one at a time (bench/ablation.py), at 10 sessions: a relay started
        afresh unchanged and one without each stage, all running at once, their runs interleaved round by
        round, so the machine's drift and the store's growth reach each alike. A stage's cost in place is
        what the relay without it saves per message against the unchanged one, in the same round. The floor
        runs in the same rounds, so that each relay's msg/s reads as a share of the floor's: whether a relay
        without a stage would meet the target, measured rather than inferred from another phase."""
        sessions = self.target_sessions
        relays: dict[str, servers.Server] = {}
        try:
            (self.workdir / "ablation-floor").mkdir(exist_ok=True)
            relays[report.FLOOR] = servers.start_floor(
                self.workdir / "ablation-floor", sink_port, self.args.workers
            )
            for variant in ("", *ablation.VARIANTS):
                relays[variant] = servers.start_mailrelay(
                    self.workdir / f"ablation-{variant or 'none'}",
                    sink_port,
                    self.args.workers,
                    self.args.log_level,
                    without=(variant,) if variant else (),
                )
            plan = [("rejection", "", True), ("other mail", "", False)]
            plan += [(variant, variant, True) for variant in ablation.VARIANTS]
            plan += [(report.FLOOR, report.FLOOR, True)]
            for shape in SHAPES:
                count = self.count_like(report.REJECTION, shape.name, sessions)
                runs = {name: Ablated(shape.name, name, sessions) for name, _v, _r in plan}
                # A stage's cost is a difference of two noisy figures: two rounds more than the counted runs.
                for round_ in range(self.profile.runs + 3):  # round 0 warms every relay up, uncounted
                    for name, variant, rejection in alternating(plan, round_ + 1):
                        server, cell = relays[variant], runs[name]
                        unique = self.unique(self.messages[shape.name, rejection], f"ablation-{round_}")
                        total = count if round_ else 3 * sessions
                        cpu0 = procs.cpu_seconds(server.root_pid)
                        machine0 = procs.machine_seconds()
                        started = time.perf_counter()
                        result = load.smtp_source(server.port, unique, SENDER, RECIPIENT, sessions, total)
                        seconds = time.perf_counter() - started
                        idle, stolen = procs.machine_seconds().since(machine0)
                        cpu = procs.cpu_seconds(server.root_pid) - cpu0
                        cell.errors += result.errors
                        cell.detail = cell.detail or result.detail
                        if round_:
                            cell.cpu_ms.append(cpu / total * 1000)
                            cell.rates.append(total / seconds)
                            cell.idle_cores.append(idle / seconds)
                            cell.stolen_cores.append(stolen / seconds)
                            cell.messages += total
                for cell in runs.values():
                    self.ablated.append(cell)
                    self.say(
                        f"ablation {shape.name:17} {cell.variant:12}: "
                        f"{statistics.median(cell.cpu_ms):6.2f} ms CPU/msg" + errors_said(cell)
                    )
        finally:
            for server in relays.values():
                server.stop()

    def _latency_run(
        self,
        server: servers.Server,
        cell: Cell,
        payload: bytes,
        count: int,
        rate: float | None = None,
        stage_seconds: dict[str, float] | None = None,
    ) -> float:
        """One latency run into `cell` (closed loop, or offered at `rate` msg/s); returns the msg/s. With
        `stage_seconds`, mailrelay's own histograms are read around the run: each stage's seconds are added
        there, and the messages that spent over servers.SLOW_STAGE_SECONDS in it to `cell.stage_slow`
        (issue 8: "the profile that shows where the time goes" for a latency target not met)."""
        timed = stage_seconds if server.metrics_ports else None  # Postfix and the floor have no /metrics
        before = servers.histogram_sums_and_slow(server.metrics_ports) if timed is not None else ({}, {})
        cpu0 = procs.cpu_seconds(server.root_pid)
        result = load.latency_run(server.port, payload, SENDER, cell.sessions, count, rate)
        cpu = procs.cpu_seconds(server.root_pid) - cpu0
        self._drain(server)
        if timed is not None:
            sums, slow = servers.histogram_sums_and_slow(server.metrics_ports)
            for key in sums:
                timed[key] = timed.get(key, 0.0) + sums[key] - before[0][key]
                cell.stage_slow[key] = cell.stage_slow.get(key, 0.0) + slow[key] - before[1][key]
        achieved = max(result.messages, 1) / result.seconds
        cell.rates.append(achieved)
        cell.cpu_ms.append(cpu / max(result.messages, 1) * 1000)
        cell.p50_ms.append(percentile(result.latencies, 0.50) * 1000)
        cell.p99_ms.append(percentile(result.latencies, 0.99) * 1000)
        cell.messages += result.messages
        cell.errors += result.errors
        cell.detail = cell.detail or result.detail
        return achieved

    def paced_latency(self, entries: list[Entry], sessions: int = 10) -> None:
        """p50/p99 at PACED_RATE msg/s offered by `sessions` clients: a load every contestant carries, so
        the latency is the time a message takes, not the queue in front of a saturated server."""
        for shape in SHAPES:
            cells = {e.contestant: Cell(e.contestant, shape.name, sessions, "latency-paced") for e in entries}
            count = 2 * sessions if self.args.smoke else round(PACED_RATE * self.profile.paced_seconds)
            stage_seconds: dict[str, dict[str, float]] = {name: {} for name in cells}
            for run in range(self.profile.runs):
                for e in alternating(entries, run):
                    payload = wire_bytes(self.messages[shape.name, e.rejection])
                    cell, spent = cells[e.contestant], stage_seconds[e.contestant]
                    self._latency_run(e.server, cell, payload, count, PACED_RATE, spent)
            for name, cell in cells.items():
                if cell.messages:
                    cell.stage_ms = {k: v / cell.messages * 1000 for k, v in stage_seconds[name].items()}
                self.cells.append(cell)
                self.say(
                    f"{cell.contestant:{NAME_WIDTH}} {shape.name:17} {sessions:3} sessions at"
                    f" {PACED_RATE:.0f} msg/s: "
                    f"p50 {cell.median(cell.p50_ms):6.2f} ms  p99 {cell.median(cell.p99_ms):6.2f} ms"
                    + errors_said(cell)
                )

    def latency(self, entries: list[Entry], sessions: int = 10) -> None:
        """Closed loop: `sessions` clients each sending as soon as the last reply came, runs side by side."""
        for shape in SHAPES:
            cells = {
                e.contestant: Cell(e.contestant, shape.name, sessions, "latency-client") for e in entries
            }
            rates = dict.fromkeys(cells, 0.0)
            if not self.args.smoke:
                for e in entries:
                    payload = wire_bytes(self.messages[shape.name, e.rejection])
                    warm = load.latency_run(e.server.port, payload, SENDER, sessions, 3 * sessions)
                    self._drain(e.server)
                    rates[e.contestant] = max(warm.messages, 1) / warm.seconds
            for run in range(self.profile.runs):
                for e in alternating(entries, run):
                    cell = cells[e.contestant]
                    payload = wire_bytes(self.messages[shape.name, e.rejection])
                    sampler = procs.RssSampler(e.server.root_pid).start()
                    try:
                        count = self.count_for(rates[e.contestant], sessions)
                        rates[e.contestant] = self._latency_run(e.server, cell, payload, count)
                    finally:
                        sampler.stop()
                    cell.peak_rss = max(cell.peak_rss, sampler.peak)
            for cell in cells.values():
                self.cells.append(cell)
                self.say(
                    f"{cell.contestant:{NAME_WIDTH}} {shape.name:17} {sessions:3} sessions: "
                    f"p50 {cell.median(cell.p50_ms):6.2f} ms"
                    f"  p99 {cell.median(cell.p99_ms):6.2f} ms" + errors_said(cell)
                )

    def measure_memory(self, server: servers.Server, contestant: str) -> None:
        """RSS idle, then with N sessions open at once, each holding its next-hop connection after a
        rejection: the cost of one more concurrent session."""
        import asyncio

        if not self.profile.memory_sessions:
            return
        idle = procs.rss_bytes(server.root_pid)
        payload = wire_bytes(self.messages["multipart-ja-20k", True])
        n = self.profile.memory_sessions

        async def hold() -> int:
            opened = []
            for i in range(n):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                await load._reply(reader)
                writer.write(b"EHLO bench.client\r\n")
                await load._reply(reader)
                writer.write(
                    f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<m{i}.applicant@gmail.example>\r\nDATA\r\n".encode()
                )
                for _ in range(3):
                    await load._reply(reader)
                writer.write(payload)
                await load._reply(reader)
                opened.append(writer)
            await asyncio.sleep(0.5)
            rss = procs.rss_bytes(server.root_pid)
            for writer in opened:
                writer.write(b"QUIT\r\n")
                writer.close()
            return rss

        try:
            loaded = asyncio.run(hold())
        except (OSError, load.SmtpError) as exc:
            # mailrelay refuses more than smtp.max_connections_per_client (50) sessions from one address.
            self.notes.append(f"{contestant}: memory per session not measured: {type(exc).__name__}: {exc}")
            return
        self.memory.append(Memory(contestant, idle, n, loaded))
        self.say(f"{contestant}: idle {idle / 2**20:.1f} MiB, {n} open sessions {loaded / 2**20:.1f} MiB")

    def run_soak(self, server: servers.Server) -> None:
        seconds = self.args.soak if self.args.soak is not None else self.profile.soak
        if seconds <= 0:
            return
        self.say(f"soak: mailrelay, rejection mail, 10 sessions, {seconds:.0f} s")
        payload = wire_bytes(self.messages["multipart-ja-20k", True])
        sampler = procs.RssSampler(server.root_pid, interval=1.0).start()
        deadline = time.monotonic() + seconds
        messages = 0
        started = time.monotonic()
        while time.monotonic() < deadline:
            result = load.latency_run(server.port, payload, SENDER, 10, 500)
            messages += result.messages
        sampler.stop()
        self.soak = Soak(time.monotonic() - started, messages, sampler.samples)

    def run(self) -> None:
        sink = servers.start_sink(self.workdir)
        self.sink_pid = sink.root_pid
        try:
            self._contestants(sink.port)
        finally:
            sink.stop()
        config = servers.mailrelay_config(self.workdir / "micro", free_port(), sink.port)
        self.say("micro-benchmarks")
        self.micros = micro.run_all(config, self.messages, self.workdir, self.profile.micro_budget)
        for m in self.micros:
            self.say(f"{m.name}: {m.per_op_ms:.3f} ms {m.note}")

    def _contestants(self, sink_port: int) -> None:
        """Every contestant started at once; their throughput and latency runs alternate round by round, so
        that each ratio compares runs made side by side, not phases minutes apart on a machine whose speed
        drifts (issue 8: "ratios measured side by side in one run")."""
        workers = self.args.workers
        started: list[servers.Server] = []
        try:
            self.say(f"floor ({workers} worker processes)")
            floor = servers.start_floor(self.workdir, sink_port, workers)
            started.append(floor)
            self.say(f"mailrelay ({workers} worker processes)")
            relay = servers.start_mailrelay(self.workdir, sink_port, workers, self.args.log_level)
            started.append(relay)
            postfix = self._start_postfix(sink_port)
            control = self._start_tmpfs_control(sink_port)
            entries = [
                Entry(floor, report.FLOOR, False),
                Entry(relay, report.OTHER, False),
                Entry(relay, report.REJECTION, True),
            ]
            if postfix is not None:
                started.append(postfix)
                entries.append(Entry(postfix, report.POSTFIX, False))
            if control is not None:
                started.append(control)
                entries.append(Entry(control, report.REJECTION_TMPFS, True))
            self.throughput(entries)
            self.sample(relay, report.OTHER, rejection=False)
            self.sample(relay, report.REJECTION, rejection=True)
            self.latency(entries)
            self.paced_latency(entries)
            if control is not None:
                control.stop()  # not needed for memory and the soak, and its workers would take their share
            for server, name in ((floor, "floor"), (relay, "mailrelay"), (postfix, "postfix")):
                if server is not None:
                    self.measure_memory(server, name)
            self.run_soak(relay)
        finally:
            for server in started:
                server.stop()
            if self.tmpfs_state is not None:
                shutil.rmtree(self.tmpfs_state, ignore_errors=True)
        self.say("mailrelay without each of a rejection's stages in turn")
        self.ablate(sink_port)

    def _start_tmpfs_control(self, sink_port: int) -> servers.Server | None:
        """A second mailrelay, sent rejections beside the relay as shipped, whose state directory (event
        store, journal) is on tmpfs, where an fsync returns at once: a control, not a way to run it (a power
        cut would lose what it recorded). It tells what waiting for the disk's fsyncs costs in msg/s and in a
        message's time (issue 8: "the profile that shows where the time goes"). None, with a note, where it
        cannot run."""
        why = servers.tmpfs_unavailable()
        if why is not None:
            self.notes.append(f"The control relay with its state on tmpfs: not measured, {why}.")
            return None
        self.say(f"mailrelay with its state on tmpfs ({self.args.workers} worker processes), a control")
        self.tmpfs_state = Path(tempfile.mkdtemp(prefix="mailrelay-bench-", dir=servers.TMPFS))
        workdir = self.workdir / "tmpfs-control"
        workdir.mkdir()
        try:
            return servers.start_mailrelay(
                workdir, sink_port, self.args.workers, self.args.log_level, state=self.tmpfs_state
            )
        except Exception as exc:
            self.notes.append(
                f"The control relay with its state on tmpfs: not measured, it did not start: {exc}."
            )
            return None

    def _start_postfix(self, sink_port: int) -> servers.Server | None:
        """A throwaway Postfix relaying to the sink, or None with a note saying why not."""
        why = servers.postfix_unavailable() if not self.args.no_postfix else "left out with --no-postfix"
        if why is not None:
            self.notes.append(f"Postfix: not measured, {why}.")
            return None
        self.say("postfix")
        try:
            return servers.start_postfix(self.workdir, sink_port)
        except Exception as exc:
            self.notes.append(f"Postfix: not measured, it did not start: {exc}")
            return None

    def machine(self) -> dict[str, str]:
        return this_machine()


def this_machine() -> dict[str, str]:
    """What RESULTS.md's `Machine:` line says of the machine and the interpreter this run is on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        # Which build ran every Python contestant: Debian's python3.11 (PGO, LTO) took 11-21 % less CPU
        # per message than pyenv's plain build, same packages (bench/README.md, "The interpreter").
        "interpreter": os.path.realpath(sys.executable),
        "kernel": platform.release(),
    }


class Recorded(Bench):
    """A finished run read back from its RESULTS.json (`--render`): the report's wording can change without
    measuring again, and the figures stay those of the run."""

    def __init__(self, data: dict[str, Any]) -> None:  # no Bench.__init__: nothing is run or written
        self.args = argparse.Namespace(**data["args"])
        self.side_by_side = bool(data["args"].get("side_by_side", False))
        profile = dict(data["profile"])
        self.profile = Profile(**{**profile, "sessions": tuple(profile["sessions"])})
        self.cells = [Cell(**cell) for cell in data["cells"]]
        self.memory = [Memory(**m) for m in data["memory"]]
        self.micros = [micro.Micro(**{**m, "spread_ms": tuple(m["spread_ms"])}) for m in data["micro"]]
        soak = data["soak"]
        self.soak = None if soak is None else Soak(**{**soak, "samples": [tuple(x) for x in soak["samples"]]})
        self.notes = list(data["notes"])
        self.samples = [sampling.Sampled(**sampled) for sampled in data.get("samples", [])]
        self.ablated = [Ablated(**cell) for cell in data.get("ablated", [])]
        self._machine: dict[str, str] = data["machine"]

    def machine(self) -> dict[str, str]:
        return self._machine


def render_recorded(path: Path, out: Path) -> int:
    data = json.loads(path.read_text())
    missing = {"args", "profile", "soak", "notes", "generated", "elapsed"} - set(data)
    if missing:
        print(f"{path}: written before --render existed (no {', '.join(sorted(missing))})", file=sys.stderr)
        return 2
    text = report.render(Recorded(data), data["command"], data["elapsed"], generated=data["generated"])
    out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter runs, no soak (about 3 minutes)")
    mode.add_argument("--smoke", action="store_true", help="a few messages through each contestant (CI)")
    parser.add_argument("--runs", type=int, default=None, help="counted runs per cell (default 3)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes of floor and mailrelay (default: nproc)",
    )
    parser.add_argument(
        "--soak", type=float, default=None, metavar="SECONDS", help="RSS soak length (default 30)"
    )
    parser.add_argument("--no-postfix", action="store_true", help="leave Postfix out")
    parser.add_argument(
        "--log-level", default="INFO", help="mailrelay's log level (default INFO, as shipped)"
    )
    parser.add_argument("--out", type=Path, default=None, help="report file (default bench/RESULTS.md)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="measure nothing: write the report again from a run's RESULTS.json (to --out, or beside it)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render_recorded(args.render, args.out or args.render.with_suffix(".md"))
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "default"]
    if args.runs is not None:
        profile.runs = args.runs
    out = args.out or (None if args.smoke else Path(__file__).resolve().parent / "RESULTS.md")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailrelay-bench-") as tmp:
        bench = Bench(args, profile, Path(tmp))
        bench.run()
        elapsed = time.monotonic() - started
        command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
        generated = time.strftime("%Y-%m-%d %H:%M %Z")
        text = report.render(bench, command, elapsed, generated=generated)
        errors = sum(c.errors for c in bench.cells) + sum(c.errors for c in bench.ablated)
        if out is not None:
            out.write_text(text)
            out.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "machine": bench.machine(),
                        "command": command,
                        "generated": generated,
                        "elapsed": elapsed,
                        "args": {
                            "workers": args.workers,
                            "log_level": args.log_level,
                            "side_by_side": bench.side_by_side,
                        },
                        "profile": asdict(bench.profile),
                        "cells": [asdict(c) for c in bench.cells],
                        "memory": [asdict(m) for m in bench.memory],
                        "micro": [asdict(m) for m in bench.micros],
                        "soak": None if bench.soak is None else asdict(bench.soak),
                        "notes": bench.notes,
                        "samples": [asdict(sampled) for sampled in bench.samples],
                        "ablated": [asdict(cell) for cell in bench.ablated],
                    },
                    indent=1,
                    ensure_ascii=False,
                )
            )
            bench.say(f"wrote {out} in {elapsed:.0f} s")
        else:
            print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
