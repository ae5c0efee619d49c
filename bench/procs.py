"""CPU and memory of a server and all its processes, read from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path
from typing import NamedTuple

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: the fields after it start past the last ')'.
    return text[text.rfind(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """root and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """utime+stime of every live process in the tree, plus cutime+cstime (children already reaped: Postfix's
    short-lived smtpd and cleanup), so a delta over a run counts every process that worked in it."""
    total = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            # After the ')' : state ppid ... utime is field 14 of stat, i.e. index 11 here.
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


def thread_cpu_seconds(root: int, names: tuple[str, ...]) -> float:
    """utime+stime of the live threads in the tree whose kernel name (comm) is one of `names`: mailrelay's
    store threads (mailrelay.store.events names them), told apart from each worker's event loop."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):  # the process or the thread may exit meanwhile
            for task in Path(f"/proc/{pid}/task").iterdir():
                text = (task / "stat").read_text()
                if text[text.find("(") + 1 : text.rfind(")")] in names:
                    total += sum(int(x) for x in text[text.rfind(")") + 2 :].split()[11:13])
    return total / _TICK


class MachineSeconds(NamedTuple):
    """The machine's CPU time, all CPUs added, from one read of /proc/stat: a delta over a run, divided by
    its wall time, is a number of cores."""

    idle: float  # idle + iowait: cores no process and no kernel work used
    stolen: float  # steal: cores the hypervisor gave to other machines while this one's had work

    def since(self, earlier: MachineSeconds) -> MachineSeconds:
        return MachineSeconds(self.idle - earlier.idle, self.stolen - earlier.stolen)


def machine_seconds() -> MachineSeconds:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    # "cpu user nice system idle iowait irq softirq steal ...", in ticks of SC_CLK_TCK.
    stolen = int(fields[8]) if len(fields) > 8 else 0
    return MachineSeconds((int(fields[4]) + int(fields[5])) / _TICK, stolen / _TICK)


def children_cpu_seconds() -> float:
    """utime+stime of this process's children that have been waited for (smtp-source runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(root: int) -> int:
    """PSS summed over the tree: shared pages (libraries, copy-on-write) are split between the processes
    that share them, so 100 Postfix smtpd processes or N workers are not counted N times over."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):  # the process may exit meanwhile
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class RssSampler:
    """Samples the tree's summed PSS in a thread; `peak` is the largest sum seen since the last reset."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.root)
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
