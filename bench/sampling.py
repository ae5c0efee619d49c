"""Where mailrelay's Python time goes under load: py-spy samples of every worker, by stage (issue 8)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mailrelay.store.events import CHECKPOINTER, READER, WRITER

# Samples per second per worker. py-spy reads the workers' memory from outside (--nonblocking: it never
# stops them), and the run it samples is not one of the counted runs.
RATE_HZ = 500

Named = tuple[tuple[str, re.Pattern[str]], ...]


def _named(*patterns: tuple[str, str]) -> Named:
    return tuple((name, re.compile(pattern)) for name, pattern in patterns)


# A sample is the first of these stages that any frame of its stack shows: a DKIM signature is signing
# wherever it is called from, the store's writer thread is the store whatever it runs.
STAGES = _named(
    # py-spy shows a thread by its Python name: the store's pool names them WRITER_0 and READER_0; the
    # checkpointer's checkpoints are what the writer's commits did before it (store/events.py)
    ("store, writer thread", rf"^thread \(\d+\): ({re.escape(WRITER)}_|{re.escape(CHECKPOINTER)})"),
    ("store, retry-check thread", rf"^thread \(\d+\): {re.escape(READER)}_"),
    ("DKIM signing", r"\((mailrelay/signing\.py|mailrelay/stages/dkim_sign\.py|dkim/)"),
    ("decoration", r"\(mailrelay/stages/|ParsedMessage\.decorate |ParsedMessage\._decorate_part "),
    ("detection", r"\(mailrelay/detection/|Relay\.detect "),
    ("store, on the event loop", r"\(mailrelay/store/|concurrent/futures/"),
    ("logging", r"\(logging/"),
    ("metrics", r"\(prometheus_client/|\(mailrelay/metrics\.py"),
)
# Otherwise it is the layer of its deepest frame that shows one: the relay session calls the next hop,
# which calls the message's wire checks, and each is charged only what it does itself.
LAYERS = _named(
    ("message bytes: parse, text, wire checks", r"\((mailrelay/message\.py|mailrelay/charsets\.py)"),
    ("forwarding to the next hop", r"\((mailrelay/transport\.py|aiosmtplib/)"),
    ("receiving (SMTP server)", r"\((mailrelay/smtp/|aiosmtpd/)"),
    # not app.py: its frame is under every callback the event loop runs
    ("relay session (envelope, plan, replies)", r"\(mailrelay/(relay|config)\.py"),
)
REST = "event loop and the rest"
ORDER = (*(name for name, _ in STAGES), *(name for name, _ in LAYERS), REST)


@dataclass
class Sampled:
    """One sampled run: the GIL holder's time per message, by stage."""

    contestant: str
    shape: str
    sessions: int
    messages: int
    ms_by_stage: dict[str, float] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.ms_by_stage.values())


def unavailable() -> str | None:
    """Why no profile can be taken here, or None."""
    if sys.platform != "linux":
        return "py-spy sampling is set up for Linux only"
    if _py_spy() is None:
        return "py-spy is not installed (`pip install -e '.[dev]'` installs it)"
    return None


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy on each pid, sampling the thread that holds the GIL (--gil): where a worker runs Python, or C
    called from Python without releasing the GIL. The clock is the wall's: a worker the kernel preempts
    while it holds the GIL still counts. Work outside the GIL (OpenSSL's RSA, SQLite's C, the kernel's
    side of I/O) is not sampled."""

    def __init__(self, pids: list[int], workdir: Path) -> None:
        spy = _py_spy()
        assert spy is not None
        self.outputs = [workdir / f"py-spy-{pid}.txt" for pid in pids]
        options = ["--gil", "--threads", "--nonblocking", "--format", "raw", "--rate", str(RATE_HZ)]
        self.procs = [
            subprocess.Popen(
                [spy, "record", *options, "--pid", str(pid), "--output", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for pid, out in zip(pids, self.outputs, strict=True)
        ]

    def stop(self) -> Counter[str]:
        """Stop sampling; samples by stage, summed over the pids."""
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        errors = []
        for proc in self.procs:
            _, stderr = proc.communicate(timeout=60)
            if proc.returncode not in (0, -signal.SIGINT):
                errors.append(stderr.decode(errors="replace").strip()[-300:])
        counts: Counter[str] = Counter()
        for out in self.outputs:
            if out.exists():
                counts.update(by_stage(out.read_text()))
        if not counts and errors:
            raise RuntimeError(f"py-spy took no samples: {errors[0]}")
        return counts


def by_stage(raw: str) -> Counter[str]:
    """py-spy's raw (collapsed) output, `frame;frame;... count` per line, as samples by stage."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[stage_of(stack.split(";"))] += int(count)
    return counts


def stage_of(frames: list[str]) -> str:
    """The stage a sample counts for: see STAGES, then LAYERS."""
    for name, rx in STAGES:
        if any(rx.search(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, rx in LAYERS:
            if rx.search(frame):
                return name
    return REST


def per_message(counts: Counter[str], messages: int) -> dict[str, float]:
    """Samples as ms per message."""
    return {stage: n * 1000 / RATE_HZ / messages for stage, n in counts.items()}
