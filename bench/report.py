"""Renders one benchmark run as bench/RESULTS.md: tables of medians with their spread, ratios, targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.__main__ import Ablated, Bench, Cell

MiB = 2**20
FLOOR = "floor"
OTHER = "mailrelay (other mail)"
REJECTION = "mailrelay (rejection)"
POSTFIX = "postfix"
# A control: mailrelay, its state directory on tmpfs, sent rejections beside the others (bench/__main__.py)
REJECTION_TMPFS = "mailrelay (rejection), state on tmpfs"
# How a sentence on what the control reached opens, under a throughput or a latency miss.
_CONTROL_SAID = " The same relay with its state on tmpfs (the control), where an fsync returns at once: "
# Every contestant, in the order the tables list them.
CONTESTANTS = (FLOOR, OTHER, REJECTION, POSTFIX, REJECTION_TMPFS)
# The bar on a decorated message's added p99 latency at 10 sessions, in ms.
ADDED_P99_TARGET_MS = 20


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return fmt.format(_med(values))
    return f"{fmt.format(_med(values))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


class _Index:
    def __init__(self, cells: list[Cell]) -> None:
        self.cells = {(c.contestant, c.shape, c.sessions, c.tool): c for c in cells}

    def get(self, contestant: str, shape: str, sessions: int, tool: str = "smtp-source") -> Cell | None:
        return self.cells.get((contestant, shape, sessions, tool))

    def rate(self, contestant: str, shape: str, sessions: int, tool: str = "smtp-source") -> float | None:
        cell = self.get(contestant, shape, sessions, tool)
        return _med(cell.rates) if cell and cell.rates else None

    def ratio(
        self, contestant: str, other: str, shape: str, sessions: int, tool: str = "smtp-source"
    ) -> float | None:
        a, b = self.rate(contestant, shape, sessions, tool), self.rate(other, shape, sessions, tool)
        return a / b if a and b else None

    def round_ratios(self, contestant: str, other: str, shape: str, sessions: int) -> list[float]:
        """Each round's own ratio: the contestant's run against `other`'s run of the same round (the runs
        are recorded in round order); empty where the two did not run the same number of rounds."""
        a, b = self.get(contestant, shape, sessions), self.get(other, shape, sessions)
        if not (a and b and a.rates and len(a.rates) == len(b.rates) and all(b.rates)):
            return []
        return [x / y for x, y in zip(a.rates, b.rates, strict=True)]


def _interpreter(machine: dict[str, str]) -> str:
    """Which interpreter build ran the Python contestants (RESULTS.json of a run before it was recorded
    says nothing of it): its build moves their CPU per message, Postfix's not (bench/README.md)."""
    interpreter = machine.get("interpreter")
    return f' (`{interpreter}`; see bench/README.md, "The interpreter")' if interpreter else ""


def _stolen(bench: Bench) -> str:
    """How much of the 2 cores the hypervisor gave to others during the throughput runs (RESULTS.json of a
    run before steal was measured says nothing of it): every table below counts on both cores."""
    stolen = [value for cell in bench.cells for value in cell.stolen_cores]
    if not stolen:
        return ""
    return (
        f" The hypervisor gave the cores to other machines for {statistics.median(stolen):.2f} of the 2 "
        f"during a throughput run, median [{min(stolen):.2f}–{max(stolen):.2f}] (steal, from /proc/stat): "
        "the contestants shared what was left."
    )


def _side_by_side(bench: Bench) -> str:
    """How the runs were ordered (RESULTS.json of a run before they alternated says nothing of it)."""
    if not bench.side_by_side:
        return ""
    return (
        "All contestants run at once, and for each message and concurrency their runs alternate (each round "
        "runs every contestant once, the order reversed every other round), so that a ratio compares runs "
        "made side by side, not phases minutes apart. "
    )


def _paced_sample(paced: list[Cell], rate: float) -> str:
    """How many messages one paced run's p99 is read from (bench.percentile's index), when all runs had
    the same count."""
    per_run = {round(c.messages / len(c.p99_ms)) for c in paced if c.p99_ms}
    if len(per_run) != 1:
        return ""
    count = per_run.pop()
    slowest = count - min(count - 1, max(0, round(0.99 * (count - 1))))
    return (
        f" Each run offers {count} messages ({count / rate:.0f} s), so its p99 is the "
        f"{_ordinal(slowest)} slowest of them."
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def _ratio_with_rounds(ratio: float | None, rounds: list[float]) -> str:
    """A ratio to the floor, with the spread of the rounds' own ratios where there were several."""
    if ratio is None or len(rounds) < 2:
        return _pct(ratio)
    return f"{ratio * 100:.0f} % [{min(rounds) * 100:.0f}–{max(rounds) * 100:.0f}]"


def render(bench: Bench, command: str, elapsed: float, *, generated: str) -> str:
    from bench.load import PACED_RATE
    from bench.messages import SHAPES

    idx = _Index(bench.cells)
    machine = bench.machine()
    sessions = bench.profile.sessions
    contestants = [c for c in CONTESTANTS if any(x.contestant == c for x in bench.cells)]
    lines = [
        "# Benchmark results (issue 8)",
        "",
        f"Generated by `{command}` on {generated} in {elapsed:.0f} s.",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}{_interpreter(machine)}. Load generator, next hop and contestant share "
        "these CPUs." + _stolen(bench),
        "",
        f"Setup: floor and mailrelay each run {bench.args.workers} worker process(es) on one port, on uvloop "
        "(the floor's with SO_REUSEPORT; mailrelay's share the parent's socket, each taking a new session "
        "while it serves no more than the others); Postfix runs its own process model. Next hop: Postfix "
        "`smtp-sink`. "
        f"mailrelay logs at {bench.args.log_level} to a file, SQLite event store (WAL, synchronous=FULL), "
        "one RSA-2048 DKIM key. Every figure is the median of "
        f"{bench.profile.runs} counted run(s) after a warm-up run, with [min–max] over those runs. "
        + _side_by_side(bench)
        + "Each message goes to its own recipient (smtp-source -N), so the relay's retry dedupe never hits.",
        "",
        "Messages (Japanese HR mail; the rejection and the other variant of a shape differ only in the "
        "sentences detection reads): `plain-5k` text/plain UTF-8 8bit; `multipart-ja-20k` multipart/"
        "alternative with ISO-2022-JP text and UTF-8 HTML (base64); `attachment-50k` multipart/mixed, text "
        "plus a 45 KB base64 PDF.",
        "",
        "## Throughput (smtp-source, msg/s)",
        "",
        "Postfix: msg/s counts until Postfix's queue is empty again (all relayed to the sink), not until it "
        "answered 250. CPU: utime+stime of every process of the server (workers, or Postfix's master and "
        "its daemons, reaped ones included) over the counted runs, per message, at 10 sessions.",
        "",
        "| contestant | message | "
        + " | ".join(f"{s} session{'s' if s > 1 else ''}" for s in sessions)
        + " | CPU ms/msg | peak PSS MiB |",
        "|---|---|" + "---:|" * (len(sessions) + 2),
    ]
    for contestant in contestants:
        for shape in SHAPES:
            row = [contestant, shape.name]
            for s in sessions:
                cell = idx.get(contestant, shape.name, s)
                row.append(_spread(cell.rates) if cell else "–")
            cpu_cell = idx.get(contestant, shape.name, 10) or idx.get(contestant, shape.name, sessions[-1])
            row.append(_spread(cpu_cell.cpu_ms, "{:.2f}") if cpu_cell else "–")
            peak = max(
                (c.peak_rss for c in bench.cells if c.contestant == contestant and c.shape == shape.name),
                default=0,
            )
            row.append(f"{peak / MiB:.0f}")
            lines.append("| " + " | ".join(row) + " |")

    if REJECTION_TMPFS in contestants:
        lines += [
            "",
            f"{REJECTION_TMPFS}: a control, run beside the others: the same mailrelay sent the same "
            "rejections, its state directory (SQLite event store, journal) on tmpfs, where an fsync returns "
            "at once. It is not a way to run mailrelay (a power cut would lose what it recorded); beside "
            "the relay as shipped, it tells what waiting for the disk costs, in msg/s and in a message's "
            "time.",
        ]
    lines += [
        "",
        "### Ratios to the floor (same message, same sessions)",
        "",
    ]
    if bench.side_by_side:
        lines += [
            "The median msg/s over the floor's median msg/s, the figure the targets read; in brackets, the "
            "lowest and the highest ratio of a single round (a round's run against the floor's run in the "
            "same round): how much one side-by-side comparison moved from round to round.",
            "",
        ]
    lines += [
        "| contestant | message | " + " | ".join(f"{s}" for s in sessions) + " |",
        "|---|---|" + "---:|" * len(sessions),
    ]
    for contestant in contestants:
        if contestant == FLOOR:
            continue
        for shape in SHAPES:
            row = [contestant, shape.name] + [
                _ratio_with_rounds(
                    idx.ratio(contestant, FLOOR, shape.name, s),
                    idx.round_ratios(contestant, FLOOR, shape.name, s) if bench.side_by_side else [],
                )
                for s in sessions
            ]
            lines.append("| " + " | ".join(row) + " |")

    lines += [
        "",
        "## Latency at 10 sessions (asyncio client: time from the final dot written to the reply)",
        "",
        "Postfix answers after queueing, before relaying: its latency is not comparable with the proxies'.",
        "",
        "| contestant | message | msg/s | p50 ms | p99 ms | added p99 vs floor ms | CPU ms/msg |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += _latency_rows(idx, contestants, "latency-client", with_rate=True)

    paced = [c for c in bench.cells if c.tool == "latency-paced"]
    if paced:
        lines += [
            "",
            f"### Latency at an offered load of {PACED_RATE:.0f} msg/s, 10 sessions",
            "",
            "The table above is closed-loop: 10 clients send as fast as replies come, so every contestant "
            "runs saturated and its latency is mostly the queue (10 sessions / msg/s). Here the same clients "
            f"pace themselves to {PACED_RATE:.0f} msg/s in all, a load every contestant carries, so the "
            "latency is the time one message takes through the server. The target on added latency is read "
            "here; the closed-loop figure is reported beside it." + _paced_sample(paced, PACED_RATE),
            "",
            "| contestant | message | p50 ms | p99 ms | added p99 vs floor ms | CPU ms/msg |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += _latency_rows(idx, contestants, "latency-paced", with_rate=False)

    lines += ["", "## Memory", ""]
    if bench.memory:
        lines += [
            "Memory is PSS summed over all the server's processes (shared pages split, not counted per "
            "process). Idle PSS after start, then with N sessions open at once, each holding its "
            "next-hop connection after relaying a 20 KB rejection; the difference over N is the cost of one "
            "more concurrent session.",
            "",
            "| contestant | idle MiB | open sessions | PSS then MiB | per session KiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for m in bench.memory:
            lines.append(
                f"| {m.contestant} | {m.idle_rss / MiB:.1f} | {m.sessions} | {m.loaded_rss / MiB:.1f} | "
                f"{m.per_session / 1024:.0f} |"
            )
    if bench.soak is not None and bench.soak.samples:
        samples = [rss for _t, rss in bench.soak.samples]
        tenth = max(1, len(samples) // 10)
        first, last = statistics.mean(samples[:tenth]), statistics.mean(samples[-tenth:])
        lines += [
            "",
            f"Soak: mailrelay, 20 KB rejections from 10 sessions for {bench.soak.seconds:.0f} s "
            f"({bench.soak.messages} messages, {bench.soak.messages / bench.soak.seconds:.0f} msg/s), PSS of "
            f"all processes (PSS) sampled every second: first tenth {first / MiB:.1f} MiB, last tenth "
            f"{last / MiB:.1f} MiB ({(last - first) / MiB:+.1f} MiB), max {max(samples) / MiB:.1f} MiB.",
        ]

    lines += [
        "",
        "## Stage micro-benchmarks (in one process, ms per call: median [min–max] of 5 batches)",
        "",
        "| stage | ms per call |",
        "|---|---:|",
    ]
    for m in getattr(bench, "micros", []):
        value = m.note or f"{m.per_op_ms:.3f} [{m.spread_ms[0]:.3f}–{m.spread_ms[1]:.3f}]"
        lines.append(f"| {m.name} | {value} |")

    lines += _where_the_time_goes(idx, bench)
    lines += _in_place(idx, bench, _micros(bench))
    lines += _sampled(idx, bench)
    lines += _against_postfix(idx, bench)
    lines += _one_message_split(idx, bench, min(sessions))
    lines += [
        "",
        "## Targets (from this run)",
        "",
        "Under a target not met, each message and concurrency that misses it, and what this run's bounds "
        "(the tables above) say of it: out of reach as measured on this stack; not explained by them, "
        "which leaves the difference to mailrelay's own handling; or, where mailrelay's CPU per message is "
        "within the budget, short of the busy cores the budget counts on."
        + (
            f" Where {REJECTION_TMPFS} ran, what it reached is given too: where the control meets the "
            "target, what is left of the miss is the wait for the disk."
            if REJECTION_TMPFS in contestants
            else ""
        ),
        "",
    ]
    lines += _targets(idx, bench, sessions)
    if bench.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in bench.notes]
    errors = [c for c in bench.cells if c.errors]
    ablated = [c for c in bench.ablated if c.errors]
    if errors or ablated:
        lines += ["", "## Errors", ""] + [
            f"- {c.contestant} {c.shape} {c.sessions} sessions ({c.tool}): {c.errors} — {c.detail}"
            for c in errors
        ]
        lines += [f"- ablation, {c.variant}, {c.shape}: {c.errors} — {c.detail}" for c in ablated]
    return "\n".join(lines) + "\n"


def _latency_rows(idx: _Index, contestants: list[str], tool: str, *, with_rate: bool) -> list[str]:
    """A latency table's rows: p50, p99, p99 added over the floor's, CPU per message (and msg/s)."""
    from bench.messages import SHAPES

    rows = []
    for contestant in contestants:
        for shape in SHAPES:
            cell = idx.get(contestant, shape.name, 10, tool)
            if cell is None:
                continue
            floor = idx.get(FLOOR, shape.name, 10, tool)
            added = _med(cell.p99_ms) - _med(floor.p99_ms) if floor and contestant != FLOOR else None
            rate = f" {_spread(cell.rates)} |" if with_rate else ""
            rows.append(
                f"| {contestant} | {shape.name} |{rate} {_spread(cell.p50_ms, '{:.1f}')} | "
                f"{_spread(cell.p99_ms, '{:.1f}')} | {'–' if added is None else f'{added:+.1f}'} | "
                f"{_spread(cell.cpu_ms, '{:.2f}')} |"
            )
    return rows


def _room(floor: Cell, ratio: float) -> float:
    """CPU per message a relay may spend above the floor's and still reach `ratio` of the floor's msg/s at
    the same sessions. smtp-source and smtp-sink share the 2 cores, so msg/s ≈ cores ÷ (server CPU + load
    CPU) per message: the load's share counts on both sides."""
    base, load = _med(floor.cpu_ms), _med(floor.load_cpu_ms)
    return (base + load) / ratio - load - base


def _where_the_time_goes(idx: _Index, bench: Bench) -> list[str]:
    """CPU per message above the floor's, against what the throughput targets leave room for."""
    from bench.messages import SHAPES

    rows = []
    for shape in SHAPES:
        floor, other, rejection = (idx.get(c, shape.name, 10) for c in (FLOOR, OTHER, REJECTION))
        if not (floor and other and rejection and floor.cpu_ms and floor.load_cpu_ms):
            continue
        base = _med(floor.cpu_ms)
        other_ms, rejection_ms = _med(other.cpu_ms), _med(rejection.cpu_ms)
        rows.append(
            f"| {shape.name} | {base:.2f} | {_med(floor.load_cpu_ms):.2f} "
            f"| {other_ms:.2f} ({other_ms - base:+.2f}) | +{_room(floor, 0.9):.2f} "
            f"| {rejection_ms:.2f} ({rejection_ms - base:+.2f}) | +{_room(floor, 0.5):.2f} |"
        )
    if not rows:
        return []
    wanted = ("whole plan", "event recording", "event store CPU")
    micros = _micros(bench)
    stages = "; ".join(f"{name} {ms:.2f} ms" for name, ms in micros.items() if name.startswith(wanted))
    store = [
        f"{shape.name} {_med(cell.store_cpu_ms):.2f} ms"
        for shape in SHAPES
        if (cell := idx.get(REJECTION, shape.name, 10)) and cell.store_cpu_ms
    ]
    if store:
        stages += "; the store's threads in this run, per rejection: " + ", ".join(store)
    return [
        "",
        "## Where the time goes (CPU per message at 10 sessions, smtp-source)",
        "",
        "The server's CPU per message (all its processes) against the floor's. The load generator and the "
        "next hop (smtp-source, smtp-sink: the load column) share the 2 cores with the server, so msg/s "
        "follows the server's and the load's CPU per message together: reaching 90 % of the floor's msg/s "
        "leaves a relay (floor + load) ÷ 0.9 − load, reaching 50 % leaves (floor + load) ÷ 0.5 − load; the "
        "room is that above the floor's own.",
        "",
        "| message | floor ms | load ms | mailrelay, other mail ms (added) | room for 90 % | "
        "mailrelay, rejection ms (added) | room for 50 % |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"What the added time is made of: {stages}; each message's own read, detection and signature are in "
        "the next tables.",
        *_unavoidable(micros, idx),
    ]


@dataclass(frozen=True)
class InPlace:
    """A rejection's CPU per message in the ablation phase, per round: the whole rejection, other mail, and
    what each stage saves when taken out (by variant); and the budget for 50 % of the floor's msg/s (None
    where the floor's run is missing) (ms/msg)."""

    rejection_ms: list[float]
    other_ms: list[float]
    saved: dict[str, list[float]]
    budget: float | None

    @property
    def used(self) -> float:
        return _med(self.rejection_ms)

    @property
    def accounted(self) -> float:
        """Other mail and the stages, each its median over the rounds, added up."""
        return _med(self.other_ms) + sum(_med(values) for values in self.saved.values())

    @property
    def accounted_by_round(self) -> list[float]:
        """Other mail and the stages, added up within each round (the rounds that measured them all)."""
        columns = [self.other_ms, *self.saved.values()]
        return [sum(values) for values in zip(*columns, strict=False)]


def _in_place_costs(idx: _Index, ablated: list[Ablated], shape: str) -> InPlace | None:
    from bench.ablation import VARIANTS

    cells = {c.variant: c for c in ablated if c.shape == shape}
    whole, other = cells.get("rejection"), cells.get("other mail")
    if not (whole and other and whole.cpu_ms and other.cpu_ms and all(v in cells for v in VARIANTS)):
        return None
    saved = {v: [w - x for w, x in zip(whole.cpu_ms, cells[v].cpu_ms, strict=False)] for v in VARIANTS}
    floor = idx.get(FLOOR, shape, whole.sessions)
    budget = _med(floor.cpu_ms) + _room(floor, 0.5) if floor and floor.cpu_ms and floor.load_cpu_ms else None
    return InPlace(whole.cpu_ms, other.cpu_ms, saved, budget)


def _shown_equal(a: float, b: float) -> bool:
    """Equal at the report's two decimals: "1.80, under the 1.80" or "0.00 ms off" would read as a slip."""
    return f"{a:.2f}" == f"{b:.2f}"


def _in_place_verdict(costs: InPlace, budget: float) -> str:
    """Other mail and the four stages in place against the budget for 50 %: what follows "come to N ms, "."""
    return _in_place_side(costs, budget) + _in_place_noise(costs, budget)


def _in_place_side(costs: InPlace, budget: float) -> str:
    """The medians' verdict: over, under or all of the budget, and what reaching it takes."""
    if _shown_equal(costs.accounted, budget):
        where = f"all of the {budget:.2f} ms that 50 % of the floor leaves (to within 0.01 ms)"
    else:
        side = "over" if costs.accounted > budget else "under"
        where = f"{side} the {budget:.2f} ms that 50 % of the floor leaves"
    if costs.accounted > budget:
        return (
            f"{where}: reaching it takes one of these stages, or the path every message takes, cheaper in "
            "place"
        )
    if _shown_equal(costs.used, budget):
        return f"{where}, and the rejection in that phase ({costs.used:.2f} ms) takes all of it"
    if costs.used > budget:
        return f"{where}: reaching it takes {costs.used - budget:.2f} ms off the rest"
    return f"{where}, and the rejection in that phase ({costs.used:.2f} ms) is under it"


def _in_place_noise(costs: InPlace, budget: float) -> str:
    """Where single rounds' sums fall on both sides of the budget, say so: each stage's cost is a difference
    of two relays' runs, so its noise adds up over the four (issue 8: in c37d1c7's run, on a quiet machine,
    the 20 KB rejection's rounds came to 1.45-1.83 ms, about its 1.64 budget)."""
    rounds = costs.accounted_by_round
    # One round has no spread: min and max are the same, and the budget cannot lie between them.
    if not rounds or not min(rounds) < budget < max(rounds):
        return ""
    return (
        f" (single rounds of the same sum came to {min(rounds):.2f}–{max(rounds):.2f} ms, on both sides of "
        f"the {budget:.2f}: within this run's noise)"
    )


def _in_place(idx: _Index, bench: Bench, micros: dict[str, float]) -> list[str]:
    """What each of a rejection's stages costs mailrelay in place: the ablation phase (bench/ablation.py)."""
    from bench.ablation import VARIANTS
    from bench.messages import SHAPES

    ablated = bench.ablated
    rows, verdicts = [], []
    for shape in SHAPES:
        costs = _in_place_costs(idx, ablated, shape.name)
        if costs is None:
            continue
        rows.append(
            f"| {shape.name} | {_spread(costs.rejection_ms, '{:.2f}')} | "
            f"{_spread(costs.other_ms, '{:.2f}')} | "
            + " | ".join(_spread(costs.saved[v], "{:.2f}") for v in VARIANTS)
            + f" | **{costs.accounted:.2f}** | {costs.used - costs.accounted:+.2f} | "
            + ("–" if costs.budget is None else f"{costs.budget:.2f}")
            + " |"
        )
        if costs.budget is not None:
            verdicts.append(
                f"{shape.name}: other mail and the four stages come to {costs.accounted:.2f} ms, "
                + _in_place_verdict(costs, costs.budget)
            )
    if not rows:
        return []
    alone = []
    for shape in SHAPES:
        ms = _stages(micros, shape.name)
        if ms is not None:
            alone.append(
                f"{shape.name}: signature {ms['sign']:.2f}, decoration (with a second parse) "
                f"{ms['decorate']:.2f}, store (retry check and write, ten at once) {ms['store']:.2f}"
            )
    sessions = next(c.sessions for c in ablated)
    return [
        "",
        f"### What each of a rejection's stages costs in place ({sessions} sessions, ablation)",
        "",
        "The micro-benchmarks time a stage alone, in one process; in the relay a stage also costs what it "
        "does around it: thread and GIL hand-offs, the caches it evicts, the copies and checks it causes "
        "downstream. Here mailrelay is started afresh once as shipped and once without each stage in turn "
        "(bench/ablation.py; the DKIM signature, the referral record, decoration, the retry check against "
        "earlier attempts), all at once, and each round sends the same rejections through every one of "
        "them, interleaved, plus the other variant of the message through the unchanged relay. A stage's "
        "cost in place is what the relay without it saves per message, against the unchanged relay in the "
        "same round: median [min–max] over the rounds. The rest is what a rejection costs beyond other mail "
        "and those four: the rules' further work, the link and its token, the copy's planning, logging and "
        "metrics, and where stages overlap. These relays are measured in a phase of their own, so their "
        "figures differ somewhat from the throughput table's.",
        "",
        "| message | rejection (ms) | other mail (ms) | "
        + " | ".join(f"{VARIANTS[v]} (ms)" for v in VARIANTS)
        + " | other mail + the four (ms) | the rest (ms) | CPU budget for 50 % (ms) |",
        "|---|" + "---:|" * (len(VARIANTS) + 5),
        *rows,
        "",
        "The same stages alone (micro-benchmarks above, ms): " + "; ".join(alone) + "." if alone else "",
        "",
        *[f"- {v}." for v in verdicts],
        *_in_place_waits(idx, ablated),
    ]


# A stage whose removal leaves at least this many fewer cores idle is said to keep the relay waiting: in
# the hand runs of bench/README.md ("The record's idle cores") one relay's rounds moved by up to 0.04 cores.
_WAITING_CORES = 0.05


def _in_place_waits(idx: _Index, ablated: list[Ablated]) -> list[str]:
    """The ablation's runs in msg/s and idle cores: a stage that the relay waits for with nothing to run
    (the record's group commit: each reply waits for its fsync) costs throughput beyond its CPU, which
    the table of CPU above does not show. Nothing for runs recorded before idle cores were measured."""
    from bench.ablation import VARIANTS
    from bench.messages import SHAPES

    measured = [(shape.name, _waits_measured(ablated, shape.name)) for shape in SHAPES]
    shown = [(shape, cells) for shape, cells in measured if cells is not None]
    if not shown:
        return []
    # The floor in the same rounds, in runs since it was added: each relay's msg/s as a share of its.
    with_floor = all(
        FLOOR in cells and cells[FLOOR].rates and cells[FLOOR].idle_cores for _shape, cells in shown
    )
    rows, said = [], []
    for shape, cells in shown:
        floor_rate = _med(cells[FLOOR].rates) if with_floor else None
        row = [_rate_and_idle(cells[name], floor_rate) for name in ("rejection", "other mail", *VARIANTS)]
        if with_floor:
            row.append(_rate_and_idle(cells[FLOOR], None))
        rows.append(f"| {shape} | " + " | ".join(row) + " |")
        said.append(f"{shape}: {_waiting_stage(idx, shape, cells)[1]}")
    share = (
        ", its share of the floor's msg/s in the same rounds after the comma (medians over medians)"
        if with_floor
        else ""
    )
    return [
        "",
        "The same runs in msg/s"
        + share
        + ", with the cores that no process and no kernel work used in brackets (idle; "
        "medians over the rounds). A stage can cost the relay waiting as well as CPU: a reply that waits for "
        "it with nothing else to run leaves a core idle, which the CPU per message above does not show.",
        "",
        "| message | rejection | other mail | "
        + " | ".join(f"without {VARIANTS[v]}" for v in VARIANTS)
        + (" | floor" if with_floor else "")
        + " |",
        "|---|" + "---:|" * (len(VARIANTS) + 2 + with_floor),
        *rows,
        "",
        *[f"- {line}" for line in said],
    ]


def _rate_and_idle(run: Ablated, floor_rate: float | None) -> str:
    """A cell of the table of idle cores: msg/s, its share of `floor_rate` if given, idle cores."""
    rate = _med(run.rates)
    share = f", {_pct(rate / floor_rate)}" if floor_rate else ""
    return f"{rate:.0f}{share} ({_med(run.idle_cores):.2f})"


def _waits_measured(ablated: list[Ablated], shape: str) -> dict[str, Ablated] | None:
    """The ablation's relays for `shape` by variant, if every one of them measured msg/s and idle cores."""
    from bench.ablation import VARIANTS

    cells = {c.variant: c for c in ablated if c.shape == shape}
    names = ("rejection", "other mail", *VARIANTS)
    if all(name in cells and cells[name].rates and cells[name].idle_cores for name in names):
        return cells
    return None


def _waiting_stage(idx: _Index, shape: str, cells: dict[str, Ablated]) -> tuple[bool, str]:
    """Whether a stage, taken out, leaves _WAITING_CORES fewer cores idle than the relay as shipped, and
    what the runs say: the one that leaves fewest idle, beside the floor's idle cores (the ablation's own
    floor where the run has one, else the throughput phase's at the same sessions, where measured); with
    the ablation's floor, both relays' shares of its msg/s, and whether the one without the stage meets
    50 %."""
    from bench.ablation import VARIANTS

    shipped = cells["rejection"]
    idle, rate = _med(shipped.idle_cores), _med(shipped.rates)
    best = min(VARIANTS, key=lambda v: _med(cells[v].idle_cores))
    best_idle, best_rate = _med(cells[best].idle_cores), _med(cells[best].rates)
    if idle - best_idle < _WAITING_CORES:
        return False, (
            f"no stage taken out left {_WAITING_CORES:.2f} cores fewer idle than the relay as shipped "
            f"({idle:.2f}): what the stages cost is their CPU."
        )
    # The floor of the same rounds where the run has it; before, the throughput phase's.
    same_rounds = cells.get(FLOOR)
    floor = same_rounds if same_rounds is not None else idx.get(FLOOR, shape, shipped.sessions)
    beside, shares, verdict, idle_as_floor = "", "", "", False
    if floor is not None and floor.idle_cores:
        floor_idle = _med(floor.idle_cores)
        idle_as_floor = best_idle <= floor_idle + 0.02
        if best_idle <= floor_idle:
            than = "no more than"
        elif idle_as_floor:
            than = "about as many as"
        else:
            than = "against"
        runs = "in the same rounds" if same_rounds is not None else f"at {shipped.sessions} sessions"
        beside = f", {than} the floor's runs {runs} ({floor_idle:.2f})"
    if same_rounds is not None and same_rounds.rates:
        floor_rate = _med(same_rounds.rates)
        shipped_share, best_share = rate / floor_rate, best_rate / floor_rate
        shares = f"; {_pct(shipped_share)} and {_pct(best_share)} of the floor's msg/s in the same rounds"
        if shipped_share < 0.5 <= best_share:
            verdict = " Without it, these rounds would meet 50 % of the floor's msg/s."
        elif best_share < 0.5:
            # With no more cores idle than the floor's, what is left of the miss is CPU per message.
            rest = ": the rest of the miss is CPU" if idle_as_floor else ""
            verdict = f" Even without it, these rounds stay under 50 % of the floor's msg/s{rest}."
    return True, (
        f"the relay as shipped left {idle:.2f} cores idle at {rate:.0f} msg/s; without {VARIANTS[best]}, "
        f"{best_idle:.2f}{beside}, at {best_rate:.0f} msg/s ({(best_rate / rate - 1) * 100:+.0f} %{shares}). "
        f"Besides its CPU, the relay waits for {VARIANTS[best]} with cores idle.{verdict}"
    )


# The stage micro-benchmarks the bounds below are built from, by what they stand for; "{shape}" is each
# message of the throughput runs (bench/micro.py measures them per message).
_MICRO = {
    "read": "parse + text extraction, {shape}",
    "detect_other": "detection: rules over {shape}, non-matching (text already extracted)",
    "detect": "detection: rules over {shape}, rejection (text already extracted)",
    "decorate": "decoration: parse + decorate, {shape}",
    "sign": "DKIM signing: RSA-2048, {shape}",
    "store": "event store CPU per message, 10 messages at once (retry check + write, group commit)",
    "store_loop": "event store CPU per message on the event loop, 10 messages at once (retry check's read, "
    "handing the write over and back)",
    "record": "event recording: EventStore.record, SQLite (WAL, synchronous=FULL)",
}
# Measured only by runs since it was added: a RESULTS.json from before renders without it (_store_ms).
_LATER_MICRO = {"store_loop"}


def _micros(bench: Bench) -> dict[str, float]:
    """The run's stage micro-benchmarks that succeeded: ms per call, by name."""
    return {m.name: m.per_op_ms for m in getattr(bench, "micros", []) if not m.note}


def _stages(micros: dict[str, float], shape: str) -> dict[str, float] | None:
    """The _MICRO figures for one message, or None if a micro-benchmark of them is missing or failed."""
    names = {key: name.format(shape=shape) for key, name in _MICRO.items()}
    if any(name not in micros for key, name in names.items() if key not in _LATER_MICRO):
        return None
    return {key: micros[name] for key, name in names.items() if name in micros}


def _store_parts(rejection: Cell, ms: dict[str, float]) -> tuple[float, float | None]:
    """The store's CPU per rejection, in two parts: what its threads spent in this run (at the cell's
    concurrency, batches as they came), and what it spends on the event loop, which no thread of its own
    counts: the retry check's read, which SQLite answers on the loop, and handing the write to the writer
    and taking its result back (its micro-benchmark's, ten at once; None from a run before that was
    measured). Where the run did not measure the threads, the micro-benchmark's whole CPU (both parts, ten
    at once) stands in, with no second part."""
    if not rejection.store_cpu_ms:
        return ms["store"], None
    return _med(rejection.store_cpu_ms), ms.get("store_loop")


def _store_ms(rejection: Cell, ms: dict[str, float]) -> float:
    """The store's CPU per rejection, both parts (_store_parts) added."""
    threads, loop = _store_parts(rejection, ms)
    return threads + (loop or 0.0)


def _decoration_ms(ms: dict[str, float]) -> float:
    """The least decoration's own work can cost: its micro-benchmark (parse + decorate) less parsing and text
    extraction, which include a parse."""
    return max(0.0, ms["decorate"] - ms["read"])


@dataclass(frozen=True)
class Handling:
    """Non-matching mail at one concurrency: the SMTP handling (all but the read and the rules) that 90 % of
    the floor's msg/s leaves, what the bare floor spends on its own, and what mailrelay spends (ms/msg)."""

    allowed: float
    floor: float
    mailrelay: float | None


def _handling(idx: _Index, micros: dict[str, float], shape: str, sessions: int) -> Handling | None:
    floor, ms = idx.get(FLOOR, shape, sessions), _stages(micros, shape)
    if floor is None or not floor.cpu_ms or not floor.load_cpu_ms or ms is None:
        return None
    base = _med(floor.cpu_ms)
    decided = ms["read"] + ms["detect_other"]
    other = idx.get(OTHER, shape, sessions)
    own = _med(other.cpu_ms) - decided if other and other.cpu_ms else None
    return Handling(base + _room(floor, 0.9) - decided, base, own)


@dataclass(frozen=True)
class Bound:
    """A rejection at one concurrency: the least CPU per message the stages that cannot be skipped take
    (the bound), the most a target allows (the budget), what mailrelay spent, and how many of the 2 cores
    its run kept busy, and how many no process and no kernel work used (None for a run recorded before that
    was measured); and how many busy cores the budget counts on, with how many of them the run it comes
    from left idle (ms/msg, cores)."""

    bound: float
    budget: float
    used: float
    busy: float
    idle: float | None = None
    # 50 % of the floor's msg/s leaves a CPU budget only for a run that keeps as many cores busy as the
    # floor's did (floor and load ÷ 0.5); Postfix's msg/s, for one that keeps all 2 busy.
    cores: float | None = None
    cores_idle: float | None = None
    # how many of the 2 the hypervisor gave to others during the run (None for a run recorded before that
    # was measured)
    stolen: float | None = None


def _half_floor(idx: _Index, micros: dict[str, float], shape: str, sessions: int) -> Bound | None:
    """Against 50 % of the floor's msg/s: mailrelay's own non-matching CPU plus a rejection's stages."""
    floor, ms = idx.get(FLOOR, shape, sessions), _stages(micros, shape)
    other, rejection = idx.get(OTHER, shape, sessions), idx.get(REJECTION, shape, sessions)
    if not (floor and floor.cpu_ms and floor.load_cpu_ms and ms):
        return None
    if not (other and other.cpu_ms and rejection and rejection.cpu_ms):
        return None
    extra = max(0.0, ms["detect"] - ms["detect_other"])
    bound = _med(other.cpu_ms) + extra + _decoration_ms(ms) + ms["sign"] + _store_ms(rejection, ms)
    budget = _med(floor.cpu_ms) + _room(floor, 0.5)
    return Bound(
        bound,
        budget,
        used=_med(rejection.cpu_ms),
        busy=_busy(rejection),
        idle=_idle(rejection),
        cores=_busy(floor),
        cores_idle=_idle(floor),
        stolen=_stolen_cores(rejection),
    )


def _above_postfix(
    idx: _Index, micros: dict[str, float], contestant: str, shape: str, sessions: int
) -> Bound | None:
    """Against Postfix's msg/s at 10 or 50 sessions, 2 cores ÷ its msg/s less the load's CPU: for other mail,
    the floor's CPU plus the read and the rules; for a rejection, the cheapest pass-through that read and
    decided plus a rejection's stages."""
    postfix, ms = idx.rate(POSTFIX, shape, sessions), _stages(micros, shape)
    floor, cell = idx.get(FLOOR, shape, sessions), idx.get(contestant, shape, sessions)
    if not (postfix and ms and floor and floor.cpu_ms and cell and cell.cpu_ms and cell.load_cpu_ms):
        return None
    if contestant == OTHER:
        bound = _med(floor.cpu_ms) + ms["read"] + ms["detect_other"]
    else:
        other = idx.get(OTHER, shape, sessions)
        other_ms = _med(other.cpu_ms) if other and other.cpu_ms else None
        bound = (
            _read_and_decided(_med(floor.cpu_ms), other_ms, ms)
            + _decoration_ms(ms)
            + ms["sign"]
            + _store_ms(cell, ms)
        )
    budget = 2000 / postfix - _med(cell.load_cpu_ms)
    return Bound(
        bound,
        budget,
        used=_med(cell.cpu_ms),
        busy=_busy(cell),
        idle=_idle(cell),
        cores=2.0,
        stolen=_stolen_cores(cell),
    )


def _busy(cell: Cell) -> float:
    """Cores the run kept busy: the server's and the load's CPU per message times msg/s."""
    return _med(cell.rates) * (_med(cell.cpu_ms) + _med(cell.load_cpu_ms)) / 1000


def _idle(cell: Cell) -> float | None:
    """Cores that no process and no kernel work used during the run; None if the run did not measure it."""
    return _med(cell.idle_cores) if cell.idle_cores else None


def _stolen_cores(cell: Cell) -> float | None:
    """Cores the hypervisor gave to others during the run; None if the run did not measure it."""
    return _med(cell.stolen_cores) if cell.stolen_cores else None


def _other_cores(bound: Bound) -> float:
    """Of the 2 cores, what went neither to the server and the load nor unused nor to other machines: the
    kernel's own work (interrupts, loopback networking, its threads) and other processes."""
    return max(0.0, 2 - bound.busy - (bound.idle or 0.0) - (bound.stolen or 0.0))


def _cores(bound: Bound) -> str:
    """How the 2 cores went in the run, for a table cell."""
    busy = f"{bound.busy:.1f} of 2"
    if bound.idle is None:
        return busy
    stolen = "" if bound.stolen is None else f", {bound.stolen:.1f} stolen"
    return f"{busy}, {bound.idle:.1f} idle{stolen}, {_other_cores(bound):.1f} other"


def _one_session_rates(idx: _Index, ms: dict[str, float], shape: str) -> tuple[float, float] | None:
    """At one session, msg/s of the bounds for other mail (floor + read + rules) and for rejections (read and
    decided + decoration + sign + record)."""
    floor_rate, other = idx.rate(FLOOR, shape, 1), idx.rate(OTHER, shape, 1)
    if not (floor_rate and other):
        return None
    passed = 1000 / floor_rate + ms["read"] + ms["detect_other"]
    decided = _read_and_decided(1000 / floor_rate, 1000 / other, ms)
    serial = _decoration_ms(ms) + ms["sign"] + ms["record"]
    return 1000 / passed, 1000 / (decided + serial)


def _unavoidable(micros: dict[str, float], idx: _Index) -> list[str]:
    """The work no implementation of the product can skip, against the room the targets leave."""
    from bench.messages import SHAPES

    other_rows, rejection_rows = [], []
    unmeasured = on_loop = False
    for shape in SHAPES:
        floor, ms = idx.get(FLOOR, shape.name, 10), _stages(micros, shape.name)
        handling = _handling(idx, micros, shape.name, 10)
        if floor is None or ms is None or handling is None:
            continue
        decided = ms["read"] + ms["detect_other"]
        own = "–" if handling.mailrelay is None else f"{handling.mailrelay:.2f}"
        other_rows.append(
            f"| {shape.name} | {ms['read']:.2f} + {ms['detect_other']:.2f} = {decided:.2f} "
            f"| {_room(floor, 0.9):.2f} | **{handling.allowed:.2f}** | {handling.floor:.2f} | {own} |"
        )
        half = _half_floor(idx, micros, shape.name, 10)
        other, rejection = idx.get(OTHER, shape.name, 10), idx.get(REJECTION, shape.name, 10)
        if half is None or other is None or rejection is None:
            continue
        extra = max(0.0, ms["detect"] - ms["detect_other"])
        threads, loop = _store_parts(rejection, ms)
        store = f"{threads:.2f}" if loop is None else f"{threads:.2f} + {loop:.2f}"
        unmeasured = unmeasured or not rejection.store_cpu_ms
        on_loop = on_loop or loop is not None
        rejection_rows.append(
            f"| {shape.name} | {_med(other.cpu_ms):.2f} + {extra:.2f} + {_decoration_ms(ms):.2f} "
            f"+ {ms['sign']:.2f} + {store} = **{half.bound:.2f}** | {ms['store']:.2f} "
            f"| {half.budget:.2f} | {half.used:.2f} | {half.used - half.bound:+.2f} |"
        )
    if not other_rows:
        return []
    lines = [
        "",
        "What cannot be skipped, non-matching mail. It must at least be read and run through the rules "
        "(the stages' own costs, micro-benchmarks below). What 90 % leaves for everything else, the SMTP "
        "handling (receiving, the next hop, replies, logging, metrics), is the floor's CPU plus the room, "
        "less the read and the rules. The floor's column is what a bare aiosmtpd → aiosmtplib proxy spends "
        "on that handling; mailrelay's is its non-matching CPU less the same read and rules (its DATA reader "
        "and next-hop fast paths replace aiosmtpd's and aiosmtplib's per-line and per-byte work, so it can "
        "be below the floor's on large mail). Where the allowance is under both, reaching 90 % takes SMTP "
        "handling cheaper than either by the difference.",
        "",
        "| message | read + detect (ms) | room for 90 % | SMTP handling allowed (ms) | floor's (ms) | "
        "mailrelay's (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        *other_rows,
    ]
    if rejection_rows:
        lines += [
            "",
            "What cannot be skipped, rejections. A rejection is all that a non-matching message is "
            "(received, read, run through the rules, forwarded) and more: the rules' further work, the DKIM "
            "signature (dkimpy's canonicalisation and body hash, the RSA-2048 signature in OpenSSL) and the "
            "durable record. The record is counted at what it cost in this run: the CPU of mailrelay's store "
            "threads (the writer and the retry check's reader, told apart from the event loops by their "
            "kernel names) per rejection, at 10 sessions, batches as they came"
            + (
                ", plus what the store spends on the event loop, which no thread of its own counts: the "
                "retry check's read (SQLite answers it on the loop) and handing each write to the writer and "
                "taking its result back, from the store's micro-benchmark on the loop's thread alone (ten "
                "messages at once)"
                if on_loop
                else ""
            )
            + "; the store's micro-benchmark (ten messages at once, the best batching, one process, all its "
            "threads) is beside it. Decoration is counted at the least its own work can be: its "
            "micro-benchmark (parse + decorate) less parsing and text extraction (which include a parse). "
            "The bound is mailrelay's own CPU for the non-matching variant of the same message, in this run, "
            "plus only those costs; it leaves out the link and its token, "
            + ("" if on_loop else "the retry check, ")
            + "the copy's wire checks, logging and metrics, so it is optimistic. Where the bound is over the "
            "budget for 50 %, reaching it takes a non-matching path, a stage or a store cheaper than "
            "measured. Where it is not, the last column is what mailrelay's rejection path spends on its "
            "event loops beyond those stages: the decorated copy's wire checks and sending, building and "
            "logging its records"
            + (
                ", what handing them over costs beyond the micro-benchmark's (the GIL, waking the writer "
                "while the loop is busy)"
                if on_loop
                else " and handing them over and taking back their results (waking the writer, the GIL)"
            )
            + ", metrics."
            + (
                " Where the run did not measure the store's threads (a run from before they had kernel "
                "names), the micro-benchmark stands in for them."
                if unmeasured
                else ""
            ),
            "",
            "| message | mailrelay other mail + rules' extra + decoration + sign + store threads"
            + (" + store on the loop" if on_loop else "")
            + " (ms) | store micro, ten at once (ms) | CPU budget for 50 % (ms) | mailrelay, rejection (ms) "
            "| beyond the bound (ms) |",
            "|---|---:|---:|---:|---:|---:|",
            *rejection_rows,
        ]
    return [*lines, ""]


def _sampled(idx: _Index, bench: Bench) -> list[str]:
    """py-spy's split of mailrelay's time by stage, other mail against rejections (bench/sampling.py)."""
    from bench.messages import SHAPES
    from bench.sampling import ORDER

    samples = {(s.contestant, s.shape): s for s in getattr(bench, "samples", [])}
    shapes = [sh.name for sh in SHAPES if (OTHER, sh.name) in samples and (REJECTION, sh.name) in samples]
    if not shapes:
        return []
    sessions = samples[REJECTION, shapes[0]].sessions
    pairs = [(samples[OTHER, shape], samples[REJECTION, shape]) for shape in shapes]

    def row(label: str, values: list[tuple[float, float]]) -> str:
        cells = " | ".join(f"{o:.2f} | {r:.2f} | {r - o:+.2f}" for o, r in values)
        return f"| {label} | {cells} |"

    rows = [
        row(stage, [(o.ms_by_stage.get(stage, 0.0), r.ms_by_stage.get(stage, 0.0)) for o, r in pairs])
        for stage in ORDER
    ]
    rows.append(row("**holding the GIL, in all**", [(o.total_ms, r.total_ms) for o, r in pairs]))
    counted = []
    for shape in shapes:
        other, rejection = idx.get(OTHER, shape, sessions), idx.get(REJECTION, shape, sessions)
        if not (other and rejection and other.cpu_ms and rejection.cpu_ms):
            break
        counted.append((_med(other.cpu_ms), _med(rejection.cpu_ms)))
    else:
        rows.append(row("for scale: CPU per message in the counted runs", counted))
    header = " | ".join(f"{shape}: other | rejection | difference" for shape in shapes)
    return [
        "",
        f"### Where mailrelay's time goes at {sessions} sessions, by stage (py-spy)",
        "",
        f"One more run of each message at {sessions} sessions, not counted, with py-spy sampling every "
        "worker from outside the process whenever one of its threads holds the GIL: where mailrelay runs "
        "Python, or C that Python called without releasing the GIL, in ms per message. A sample counts "
        "for the first of the stages (store to metrics) that its stack shows, so a DKIM signature is "
        "signing wherever it is called from; otherwise for the deepest layer it shows (message bytes to "
        "the relay session), so each layer is charged only its own work (bench/sampling.py). The clock is "
        "the wall's: a worker preempted while it holds the GIL still counts (the 2 cores are shared with "
        "the load, the sink and py-spy), and work outside the GIL (OpenSSL's RSA, SQLite's C code, the "
        "kernel's side of sockets and fsync) is not sampled, so the total is not the CPU per message, "
        "which is given for scale. The difference column is what a rejection spends beyond the same "
        "message that is not one, stage by stage: the bound's stages above, and what lies beyond them.",
        "",
        f"| stage | {header} |",
        "|---|" + "---:|" * (3 * len(shapes)),
        *rows,
    ]


def _read_and_decided(floor_ms: float, other_ms: float | None, ms: dict[str, float]) -> float:
    """The cheapest pass-through of a rejection that also read it and ran the rules, in ms (wall time at
    one session, CPU at 10 and 50): the floor neither reads nor decides; mailrelay's own non-matching mail
    does both, and a rejection's detection costs what the rules take beyond the non-matching variant's."""
    via_floor = floor_ms + ms["read"] + ms["detect"]
    if other_ms is None:
        return via_floor
    return min(via_floor, other_ms + max(0.0, ms["detect"] - ms["detect_other"]))


def _against_postfix(idx: _Index, bench: Bench) -> list[str]:
    """Whether mailrelay can be above Postfix at all, from this run's figures: at one session the fastest
    pass-through plus a rejection's serial steps; at 10 and 50 the CPU that matching Postfix leaves."""
    from bench.messages import SHAPES

    micros = _micros(bench)
    stages = {shape.name: _stages(micros, shape.name) for shape in SHAPES}
    if not idx.rate(POSTFIX, "plain-5k", 1) or not any(stages.values()):
        return []
    one = []
    for shape in SHAPES:
        postfix, floor_rate = idx.rate(POSTFIX, shape.name, 1), idx.rate(FLOOR, shape.name, 1)
        other, rejection = idx.rate(OTHER, shape.name, 1), idx.rate(REJECTION, shape.name, 1)
        ms = stages[shape.name]
        rates = _one_session_rates(idx, ms, shape.name) if ms else None
        if not (postfix and floor_rate and other and rejection and ms and rates):
            continue
        decided = _read_and_decided(1000 / floor_rate, 1000 / other, ms)
        # Non-matching mail is read and run through the rules before it goes out: the floor's time plus both.
        passed, bound = rates
        one.append(
            f"| {shape.name} | {postfix:.0f} | {floor_rate:.0f} "
            f"| {1000 / floor_rate:.2f} + {ms['read']:.2f} + {ms['detect_other']:.2f} ms "
            f"= {passed:.0f} ({passed / postfix:.2f}×) | {other:.0f} ({other / postfix:.2f}×) "
            f"| {decided:.2f} + {_decoration_ms(ms):.2f} + {ms['sign']:.2f} + {ms['record']:.2f} ms "
            f"= {bound:.0f} ({bound / postfix:.2f}×) "
            f"| {rejection:.0f} ({rejection / postfix:.2f}×) |"
        )
    many = []
    for sessions in (10, 50):
        for shape in SHAPES:
            postfix, cell = idx.rate(POSTFIX, shape.name, sessions), idx.get(REJECTION, shape.name, sessions)
            above = _above_postfix(idx, micros, REJECTION, shape.name, sessions)
            if postfix is None or cell is None or above is None:
                continue
            many.append(
                f"| {shape.name} | {sessions} | {postfix:.0f} | {_med(cell.load_cpu_ms):.2f} "
                f"| **{above.budget:.2f}** | {above.bound:.2f} | {above.used:.2f} | {_cores(above)} |"
            )
    if not one and not many:
        return []
    return [
        "",
        "## Can mailrelay be above Postfix? (from this run's figures)",
        "",
        "**One session** is one message at a time, and mailrelay answers the end of DATA only with what the "
        "next hop answered. A rejection therefore takes at least as long as the fastest pass-through this "
        "run measured at one session that also read the message and ran the rules over it (the floor's time "
        "plus the read and the rejection's detection, or mailrelay's own non-matching mail, which is read, "
        "decided and forwarded the same way, plus what detection costs more on the rejection), then three "
        "steps in that message's own time: decoration (at the least its own work can cost, as in the table "
        "of what cannot be skipped) and the DKIM signature before the copy can go out, and the durable "
        "referral record (one fsynced commit) after the next hop accepted it and before the answer. Postfix "
        "answers once the message is queued and relays it afterwards, several at a time. The bound leaves "
        "out the link, the retry check, logging and metrics, so it is optimistic. Where it is below "
        "Postfix, no relay on this stack that keeps those two rules (the next hop's answer; no referral "
        "lost) is above Postfix at one session. Other mail has a bound too, for a relay whose SMTP handling "
        "costs what the floor's does: the floor's time per message plus reading the message and running the "
        "rules over it. mailrelay's handling costs less than the floor's where its DATA reader and next-hop "
        "fast paths save the per-line and per-byte work (more on larger mail), so it can run above that "
        "bound; to be above Postfix where the bound is not, its handling must be cheaper than the floor's "
        "by the difference.",
        "",
        "| message | Postfix msg/s | floor msg/s | bound, other mail: floor + read + rules | "
        "mailrelay, other mail | bound, rejection: read and decided + decoration + sign + record | "
        "mailrelay, rejection |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *one,
        "",
        "**10 and 50 sessions** are limited by CPU: the load generator, the sink and the relay share the 2 "
        "cores. The last column shows how many of them mailrelay's rejection run kept busy (its processes "
        "and the load's), and, where measured, how many nothing used (idle or waiting for the disk, from "
        "/proc/stat)"
        + (
            ", how many the hypervisor gave to other machines (stolen: steal, from /proc/stat)"
            if any(cell.stolen_cores for cell in bench.cells)
            else ""
        )
        + " and how many went to other work: the kernel's own (interrupts, loopback networking, "
        "its threads) and other processes. The budget assumes all 2, so it is generous. To relay as many "
        "rejections per second as Postfix, mailrelay may spend at most 2 cores ÷ Postfix's msg/s, less what "
        "smtp-source and smtp-sink spend per message. The bound is the cheapest CPU per message this run "
        "measured for a pass-through that also read the message and ran the rules (the floor's plus the read "
        "and the rejection's detection, or mailrelay's own non-matching mail plus what detection costs more "
        "on the rejection), plus decoration's own work, the DKIM signature and the store's CPU (its "
        "threads', and on the event loop where measured), as in the table of what cannot be skipped. Where "
        "the bound "
        "is under the budget, being above Postfix is possible on this stack, and the difference between "
        "the budget and what mailrelay uses is mailrelay's own handling.",
        "",
        "| message | sessions | Postfix msg/s | load CPU ms/msg | CPU budget ms/msg | bound ms/msg "
        "| mailrelay rejection ms/msg | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *many,
    ]


def _one_message_split(idx: _Index, bench: Bench, sessions: int) -> list[str]:
    """At the fewest sessions, one message's time by mailrelay's own histograms (docs/metrics.md): the
    profile of what a rejection adds to the same message that is not one."""
    from bench.messages import SHAPES
    from bench.servers import HISTOGRAMS

    micros = _micros(bench)
    rows, notes = [], []
    for shape in SHAPES:
        split = {}
        for contestant in (OTHER, REJECTION):
            cell, rate = idx.get(contestant, shape.name, sessions), idx.rate(contestant, shape.name, sessions)
            if cell is None or not cell.stage_ms or not rate:
                break
            whole, parts = 1000 / rate, [cell.stage_ms[k] for k in HISTOGRAMS]
            split[contestant] = [whole, *parts, whole - sum(parts)]
        if len(split) < 2:
            continue
        added = [r - o for r, o in zip(split[REJECTION], split[OTHER], strict=True)]
        for label, values, sign in (
            ("other mail", split[OTHER], ""),
            ("rejection", split[REJECTION], ""),
            ("rejection − other", added, "+"),
        ):
            cells = " | ".join(f"{v:{sign}.2f}" for v in values)
            rows.append(f"| {shape.name} | {label} | {cells} |")
        ms = _stages(micros, shape.name)
        if ms is not None:
            notes.append(
                f"{shape.name}: processing {added[1]:+.2f} ms, of which the DKIM signature alone is "
                f"{ms['sign']:.2f}; recording {added[3]:.2f} ms, of which one fsynced commit alone is "
                f"{ms['record']:.2f}; the rest {added[4]:+.2f} ms."
            )
    if not rows:
        return []
    return [
        "",
        f"### {sessions} session{'s' if sessions > 1 else ''}: where a message's time goes",
        "",
        "mailrelay's own histograms (docs/metrics.md), summed over the counted runs and divided by their "
        "messages, against the time per message (1000 ÷ msg/s). Processing: parse, detection, decoration "
        "and signing. Forwarding: end of data to the next hop's reply (DATA, its 354, the copy, its 250). "
        "Recording: the durable write of the referral events (group commit, fsync). The rest: MAIL and RCPT "
        "mirrored live to the next hop, reading DATA, the retry check's wait, logging, the replies, and "
        "smtp-source's own turn. The last line of each message is what a rejection adds to the same "
        "message that is not one."
        + ("" if sessions == 1 else " Messages overlap at more than one session: the parts do not add up."),
        "",
        "| message | mail | ms per message | processing | forwarding | recording | the rest |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *(f"- {note}" for note in notes),
    ]


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "met" if ok else "NOT met"


def _targets(idx: _Index, bench: Bench, sessions: tuple[int, ...]) -> list[str]:
    """Each target met or not; under one that is not, every message and concurrency that misses it, and
    whether this run's bound puts it out of reach on this stack (the issue asks, for a target not met, why it
    cannot go lower) or leaves it to mailrelay's own handling."""
    from bench.messages import SHAPES

    micros = _micros(bench)
    out: list[str] = []
    checks = [s for s in (10, 50) if s in sessions]
    ratios = [idx.ratio(OTHER, FLOOR, sh.name, s) for sh in SHAPES for s in checks]
    known = [r for r in ratios if r is not None]
    ok = min(known) >= 0.9 if known else None
    out.append(
        f"- Non-matching mail ≥ 90 % of the floor's msg/s at 10 and 50 sessions: {_verdict(ok)} "
        f"(lowest {_pct(min(known) if known else None)})."
    )
    for sh in SHAPES:
        for s in checks:
            ratio = idx.ratio(OTHER, FLOOR, sh.name, s)
            if ratio is not None and ratio < 0.9:
                out.append(
                    f"  - {sh.name}, {s} sessions, {_pct(ratio)}: {_why_handling(idx, micros, sh.name, s)}"
                )
    ratios = [idx.ratio(REJECTION, FLOOR, sh.name, 10) for sh in SHAPES]
    known = [r for r in ratios if r is not None]
    ok = min(known) >= 0.5 if known else None
    out.append(
        f"- Rejection mail ≥ 50 % of the floor's msg/s at 10 sessions: {_verdict(ok)} "
        f"(lowest {_pct(min(known) if known else None)})."
    )
    for sh in SHAPES:
        ratio = idx.ratio(REJECTION, FLOOR, sh.name, 10)
        if ratio is not None and ratio < 0.5:
            why = _why_bound(_half_floor(idx, micros, sh.name, 10), "50 % of the floor's msg/s")
            in_place = _in_place_costs(idx, bench.ablated, sh.name)
            unexplained = why.startswith(("not explained", "within the CPU budget"))
            if unexplained and in_place is not None and in_place.budget is not None:
                # The bound adds up the stages alone; the ablation says what they cost in the relay.
                why += (
                    f" In place (the ablation above), other mail and the four stages come to "
                    f"{in_place.accounted:.2f} ms, {_in_place_verdict(in_place, in_place.budget)}."
                )
                cells = _waits_measured(bench.ablated, sh.name)
                waiting, said = _waiting_stage(idx, sh.name, cells) if cells else (False, "")
                if waiting:
                    why += f" In the same phase, {said}"
            control = _rate_control(idx, sh.name, 10, FLOOR, 0.5)
            out.append(f"  - {sh.name}, {_pct(ratio)}: {why}{control}")
    for tool, how in (("latency-paced", "at the paced load"), ("latency-client", "closed loop, saturated")):
        added = []
        for sh in SHAPES:
            cell = idx.get(REJECTION, sh.name, 10, tool)
            floor = idx.get(FLOOR, sh.name, 10, tool)
            if cell and floor:
                added.append(_med(cell.p99_ms) - _med(floor.p99_ms))
        ok = max(added) < ADDED_P99_TARGET_MS if added else None
        out.append(
            f"- Added p99 latency per decorated message < {ADDED_P99_TARGET_MS} ms at 10 sessions, {how}: "
            f"{_verdict(ok)} (largest {max(added):+.1f} ms)."
            if added
            else f"- Added p99 latency < {ADDED_P99_TARGET_MS} ms, {how}: {_verdict(None)}."
        )
        if tool == "latency-client":
            out += _why_queued(idx, 10)
        else:
            out += _why_paced(idx, micros, 10)
    for contestant in (OTHER, REJECTION):
        ratios = [idx.ratio(contestant, POSTFIX, sh.name, s) for sh in SHAPES for s in sessions]
        known = [r for r in ratios if r is not None]
        ok = min(known) > 1 if known else None
        out.append(
            f"- {contestant} above Postfix-as-relay msg/s (every message, every concurrency): {_verdict(ok)}"
            + (f" (lowest {min(known):.2f}×)." if known else ".")
        )
        for sh in SHAPES:
            for count in sessions:
                ratio = idx.ratio(contestant, POSTFIX, sh.name, count)
                if ratio is not None and ratio <= 1:
                    why = _why_below_postfix(idx, micros, contestant, sh.name, count)
                    if contestant == REJECTION:
                        why += _rate_control(idx, sh.name, count, POSTFIX, 1.0)
                    plural = "s" if count > 1 else ""
                    out.append(f"  - {sh.name}, {count} session{plural}, {ratio:.2f}×: {why}")
    return out


def _rate_control(idx: _Index, shape: str, sessions: int, base: str, needed: float) -> str:
    """What the control relay (REJECTION_TMPFS: the same relay, its state on tmpfs) says of a rejection
    throughput miss against `base`: the floor (the target: a ratio of at least `needed`) or Postfix (above
    `needed`). Where the control reaches it, the rest of the miss is the wait for the disk; where it does
    not, the miss is not the disk alone."""
    control, shipped = idx.get(REJECTION_TMPFS, shape, sessions), idx.get(REJECTION, shape, sessions)
    ratio = idx.ratio(REJECTION_TMPFS, base, shape, sessions)
    if control is None or shipped is None or ratio is None:
        return ""
    against = f"{ratio:.2f}× Postfix's" if base == POSTFIX else f"{_pct(ratio)} of the floor's"
    said = (
        f"{_CONTROL_SAID}{_med(control.rates):.0f} msg/s, {against}; "
        f"CPU {_med(control.cpu_ms):.2f} ms per message against {_med(shipped.cpu_ms):.2f}"
    )
    if control.idle_cores and shipped.idle_cores:
        said += f", {_med(control.idle_cores):.1f} cores idle against {_med(shipped.idle_cores):.1f}"
    reached = ratio > needed if base == POSTFIX else ratio >= needed
    if reached:
        return said + (
            ". That reaches the target. The rest of the miss is waiting for this machine's disk: the fsynced "
            "commit that each rejection's 250 waits for so that no referral is lost (docs/RELIABILITY.md); "
            "while one stalls, the sessions behind it wait and the cores go idle."
        )
    return said + ". That misses the target too: not the disk alone."


def _latency_misses(idx: _Index, sessions: int, tool: str) -> list[tuple[str, Cell, Cell]]:
    """Each message whose rejections' p99 in `tool`'s runs is over the floor's by the target or more, with
    the rejection's cell and the floor's."""
    from bench.messages import SHAPES

    misses = []
    for shape in (sh.name for sh in SHAPES):
        cell = idx.get(REJECTION, shape, sessions, tool)
        floor = idx.get(FLOOR, shape, sessions, tool)
        if cell and floor and _med(cell.p99_ms) - _med(floor.p99_ms) >= ADDED_P99_TARGET_MS:
            misses.append((shape, cell, floor))
    return misses


def _why_paced(idx: _Index, micros: dict[str, float], sessions: int) -> list[str]:
    """Under the paced latency target, each message that misses it: its p50 and p99 against the floor's and,
    where the run read them, mailrelay's own histograms: the average time of each stage, and how many
    messages spent over servers.SLOW_STAGE_SECONDS in each (the tail a p99 is read from)."""
    from bench.servers import HISTOGRAMS, SLOW_STAGE_SECONDS

    out = []
    for shape, cell, floor in _latency_misses(idx, sessions, "latency-paced"):
        line = (
            f"  - {shape}, {_med(cell.p99_ms) - _med(floor.p99_ms):+.1f} ms: where the time goes: "
            f"p50 {_med(cell.p50_ms):.1f} ms and p99 {_med(cell.p99_ms):.1f} against the floor's "
            f"{_med(floor.p50_ms):.1f} and {_med(floor.p99_ms):.1f}"
        )
        if all(key in cell.stage_ms and key in cell.stage_slow for key in HISTOGRAMS):
            ms = _stages(micros, shape)
            alone = f" (one fsynced commit alone: {ms['record']:.2f} ms)" if ms else ""
            over = ", ".join(f"{key} {cell.stage_slow[key]:.0f}" for key in HISTOGRAMS)
            line += (
                f". mailrelay's histograms in these runs: processing {cell.stage_ms['processing']:.2f} + "
                f"forwarding {cell.stage_ms['forwarding']:.2f} + recording {cell.stage_ms['recording']:.2f} "
                f"ms per message on average{alone}; of its {cell.messages} messages, these took over "
                f"{SLOW_STAGE_SECONDS * 1000:.0f} ms in one stage: {over}"
            )
        out.append(line + "." + _latency_control(idx, shape, sessions, "latency-paced", cell, floor))
    return out


def _latency_control(idx: _Index, shape: str, sessions: int, tool: str, cell: Cell, floor: Cell) -> str:
    """What the control relay (REJECTION_TMPFS: the same relay, its state on tmpfs) says of a latency miss
    in `tool`'s runs: within the target, the rest of the miss is the wait for the disk's fsyncs; over it,
    not the disk alone. Closed loop, with the control's msg/s (its queue); paced, with its recording tail."""
    from bench.servers import SLOW_STAGE_SECONDS

    control = idx.get(REJECTION_TMPFS, shape, sessions, tool)
    if control is None:
        return ""
    added = _med(control.p99_ms) - _med(floor.p99_ms)
    rate = f"{_med(control.rates):.0f} rejections a second, " if tool == "latency-client" else ""
    slow = ""
    if "recording" in control.stage_slow and "recording" in cell.stage_slow:
        slow = (
            f"; {control.stage_slow['recording']:.0f} of its {control.messages} messages took over "
            f"{SLOW_STAGE_SECONDS * 1000:.0f} ms in recording, against {cell.stage_slow['recording']:.0f} "
            "on the disk"
        )
    said = f"{_CONTROL_SAID}{rate}p99 {_med(control.p99_ms):.1f} ms, {added:+.1f} over the floor's{slow}."
    if added < ADDED_P99_TARGET_MS:
        return said + (
            " That is within the target. The rest of the miss is waiting for this machine's disk: the "
            "fsynced commit of the referral record (or of the journal), which the 250 waits for so that no "
            "referral is lost (docs/RELIABILITY.md). While one such fsync stalls, the messages of every "
            "worker wait behind it, one at its commit and the others for SQLite's write lock."
        )
    return said + " That is over the target too: the miss is not the disk alone."


def _why_queued(idx: _Index, sessions: int) -> list[str]:
    """Under the closed-loop latency target, each message that misses it: a saturated server's latency is
    mostly its queue, which Little's law ties to its msg/s (a closed loop's clients each take clients ÷ msg/s
    per message on average), so the added time goes with the lower msg/s (the throughput targets above say
    why), and a message's own time is the paced figure."""
    out = []
    for shape, cell, floor in _latency_misses(idx, sessions, "latency-client"):
        rate, floor_rate = _med(cell.rates), _med(floor.rates)
        queued, floor_queued = 1000 * sessions / rate, 1000 * sessions / floor_rate
        paced = idx.get(REJECTION, shape, sessions, "latency-paced")
        paced_floor = idx.get(FLOOR, shape, sessions, "latency-paced")
        own = ""
        if paced and paced_floor:
            own_ms = _med(paced.p99_ms) - _med(paced_floor.p99_ms)
            own = f"; a message's own added time, at a load both carry (paced), is {own_ms:+.1f} ms"
        added = _med(cell.p99_ms) - _med(floor.p99_ms)
        out.append(
            f"  - {shape}, {added:+.1f} ms: a queue, which Little's law ties to msg/s: with {sessions} "
            "clients each waiting for its reply, a message's whole turn (commands, data, reply) averages "
            f"{sessions} ÷ msg/s, {queued:.1f} ms at mailrelay's {rate:.0f} rejections a second against "
            f"{floor_queued:.1f} at the floor's {floor_rate:.0f} ({queued - floor_queued:+.1f} ms on "
            f"average, before the spread that p99 adds){own}."
            + _latency_control(idx, shape, sessions, "latency-client", cell, floor)
        )
    return out


def _why_handling(idx: _Index, micros: dict[str, float], shape: str, sessions: int) -> str:
    handling = _handling(idx, micros, shape, sessions)
    if handling is None:
        return "no bound (a figure it needs was not measured)."
    own = "not measured" if handling.mailrelay is None else f"{handling.mailrelay:.2f} ms"
    if handling.allowed < handling.floor:
        return (
            f"out of reach for SMTP handling that costs what the bare floor's does: 90 % leaves "
            f"{handling.allowed:.2f} ms per message for it, the floor itself spends {handling.floor:.2f}; "
            f"mailrelay's is {own}."
        )
    return (
        f"not explained by the stack: 90 % leaves {handling.allowed:.2f} ms of SMTP handling, the floor "
        f"spends {handling.floor:.2f}, mailrelay {own}."
    )


def _why_bound(bound: Bound | None, target: str) -> str:
    if bound is None:
        return "no bound (a figure it needs was not measured)."
    if bound.bound > bound.budget:
        return (
            f"out of reach as measured: the stages that cannot be skipped take {bound.bound:.2f} ms of CPU "
            f"per message, over the {bound.budget:.2f} that {target} leaves (mailrelay {bound.used:.2f})."
        )
    how_busy = (
        "."
        if bound.idle is None
        else f"; {bound.idle:.1f} stayed idle"
        + ("" if bound.stolen is None else f", the hypervisor gave {bound.stolen:.1f} to other machines")
        + f" and {_other_cores(bound):.1f} went to other work (the kernel's own, other processes)."
    )
    if bound.cores is not None and bound.used <= bound.budget:
        # mailrelay's own CPU per message fits the budget: what the run fell short of is busy cores.
        counted = (
            "with all 2 cores busy"
            if bound.cores >= 2
            else f"with as many cores busy as the floor's run kept ({bound.cores:.1f} of 2"
            + ("" if bound.cores_idle is None else f", {bound.cores_idle:.1f} idle")
            + ")"
        )
        return (
            f"within the CPU budget, short of busy cores: the stages that cannot be skipped take "
            f"{bound.bound:.2f} ms and mailrelay spends {bound.used:.2f}, both under the {bound.budget:.2f} "
            f"that {target} leaves {counted}; mailrelay's run kept {bound.busy:.1f} of the 2 busy{how_busy}"
        )
    return (
        f"not explained by the bound: the stages that cannot be skipped take {bound.bound:.2f} ms, under the "
        f"{bound.budget:.2f} that {target} leaves; mailrelay spends {bound.used:.2f} "
        f"({bound.used - bound.bound:+.2f} beyond the bound) and kept {bound.busy:.1f} of the 2 cores busy"
        + how_busy
    )


def _why_below_postfix(
    idx: _Index, micros: dict[str, float], contestant: str, shape: str, sessions: int
) -> str:
    postfix, ms = idx.rate(POSTFIX, shape, sessions), _stages(micros, shape)
    if postfix is None or ms is None:
        return "no bound (a figure it needs was not measured)."
    if sessions == 1:
        rates = _one_session_rates(idx, ms, shape)
        if rates is None:
            return "no bound (a figure it needs was not measured)."
        if contestant == OTHER:
            return _why_other_below_postfix(rates[0], postfix, idx.rate(OTHER, shape, 1))
        verdict = "out of reach as measured" if rates[1] <= postfix else "not explained by the bound"
        return f"{verdict}: the one-session bound is {rates[1]:.0f} msg/s, Postfix {postfix:.0f}."
    return _why_bound(_above_postfix(idx, micros, contestant, shape, sessions), "Postfix's msg/s")


def _why_other_below_postfix(bound: float, postfix: float, measured: float | None) -> str:
    """Other mail at one session: its bound is a relay whose SMTP handling costs what the floor's does, which
    mailrelay's DATA reader and next-hop fast paths can beat (then it runs above the bound, and the bound
    says only what handling as costly as the floor's could reach)."""
    if bound > postfix:
        return (
            f"not explained by the bound: the one-session bound is {bound:.0f} msg/s, Postfix {postfix:.0f}."
        )
    text = (
        "out of reach for SMTP handling that costs what the bare floor's does: the one-session bound (the "
        f"floor's time per message, the read and the rules) is {bound:.0f} msg/s, Postfix {postfix:.0f}"
    )
    if measured is not None and measured > bound:
        text += (
            f"; mailrelay, whose handling already costs less than the floor's, reaches {measured:.0f}: above "
            f"Postfix takes its {1000 / measured:.2f} ms per message under {1000 / postfix:.2f}"
        )
    return text + "."
