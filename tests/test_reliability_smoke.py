"""scripts/reliability runs end to end in smoke mode: correctness figures hold (timings are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def summary_value(report: str, figure: str) -> str:
    match = re.search(rf"^\| [^|]+ \| {re.escape(figure)} \| ([^|]+) \|", report, re.MULTILINE)
    assert match, f"figure {figure!r} missing from the report"
    return match.group(1).strip()


def test_reliability_smoke_loses_smuggles_and_relays_nothing(tmp_path: Path) -> None:
    out = tmp_path / "RELIABILITY.md"
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = out.read_text()
    assert "The run of this part failed" not in report, done.stderr[-3000:]
    assert summary_value(report, "acknowledged but lost") == "0"
    assert summary_value(report, "referral events lost / doubled").startswith("0 / 0")
    assert summary_value(report, "referral events lost / doubled after the replay").startswith("0 / 0")
    assert summary_value(report, "smuggling variants giving an extra message") == "0 of 6"
    assert summary_value(report, "bare CR / LF bytes reaching the next hop") == "0"
    assert summary_value(
        report, "open-relay combinations accepted (RCPT answered 2xx to the outsider)"
    ).startswith("0 ")
    assert summary_value(report, "swaks --quit-after RCPT").startswith("554 5.7.1")
    # nmap concludes only when each reply arrives in one piece (the EHLO reply is one write).
    assert "all tests failed" in summary_value(report, "nmap smtp-open-relay verdict")
    assert summary_value(report, "faults answered with the right class (4xx / 5xx), never 250") == "6 of 6"
    assert summary_value(report, "retries delivered exactly once when the next hop is back") == "5 of 5"
