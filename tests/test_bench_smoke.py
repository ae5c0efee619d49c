"""The benchmark harness runs end to end: a few messages through every contestant (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_bench_smoke_relays_through_every_contestant(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    shm_before = set(Path("/dev/shm").glob("mailrelay-bench-*"))
    bench("--smoke", "--soak", "1", "--out", str(out), timeout=120)
    report = out.read_text()
    for contestant in ("floor", "mailrelay (other mail)", "mailrelay (rejection)"):
        assert f"| {contestant} | plain-5k |" in report
    # Either Postfix ran, or the report says exactly why not.
    assert "| postfix | plain-5k |" in report or "Postfix: not measured" in report
    assert "## Errors" not in report
    # The contestants' runs alternated round by round (bench/__main__.py, alternating).
    assert "their runs alternate (each round runs every contestant once" in report
    assert "### Latency at an offered load of 100 msg/s" in report
    # mailrelay's own histograms, scraped from every worker, split a message's time.
    assert "sessions: where a message's time goes" in report
    # mailrelay's own histograms are read around its paced runs (the account under a paced miss)
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    paced = [c for c in cells if c["tool"] == "latency-paced" and c["contestant"] == "mailrelay (rejection)"]
    stages = {"processing", "forwarding", "recording"}
    assert paced and all(set(c["stage_slow"]) == set(c["stage_ms"]) == stages for c in paced)
    # Beside them, the control relay with its state on tmpfs, or the report says exactly why not.
    control = "mailrelay (rejection), state on tmpfs"
    assert (
        f"| {control} | plain-5k |" in report
        or "control relay with its state on tmpfs: not measured" in report
    )
    left = set(Path("/dev/shm").glob("mailrelay-bench-*")) - shm_before
    assert not left, f"the control's state directory is left behind: {left}"
    assert "| plain-5k | rejection − other |" in report
    assert "Soak: mailrelay, 20 KB rejections" in report
    # py-spy (a dev dependency) split mailrelay's time by stage, other mail against rejections.
    assert "sessions, by stage (py-spy)" in report
    assert "| DKIM signing |" in report
    # Each of a rejection's stages is taken out in turn (bench/ablation.py) and its cost in place reported.
    assert "costs in place (2 sessions, ablation)" in report
    assert "| plain-5k |" in report.split("costs in place")[1].split("###")[0]
    # The same runs in msg/s and idle cores: what a stage costs in waiting as well as CPU.
    waits = report.split("The same runs in msg/s, its share of the floor's")[1].split("###")[0]
    assert "| plain-5k | " in waits and "- plain-5k: " in waits
    assert "| without the retry check | floor |" in waits  # the floor runs in the ablation's rounds too
    # mailrelay's store threads are measured apart from its event loops, run by run (their kernel names).
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    throughput = [c for c in cells if c["tool"] == "smtp-source"]
    assert throughput
    for cell in throughput:
        measured = cell["contestant"].startswith("mailrelay")
        assert len(cell["store_cpu_ms"]) == (len(cell["rates"]) if measured else 0), cell

    # The report is written again from the run's RESULTS.json, measuring nothing, word for word.
    again = tmp_path / "again.md"
    bench("--render", str(out.with_suffix(".json")), "--out", str(again), timeout=60)
    assert again.read_text() == report
