"""Issue 7, logs: Postfix-style lines, a transaction id on each, applicants masked; JSON on demand."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from conftest import SettingsFactory
from mailrelay.app import setup_logging
from support.sinks import RecordingSink

E2E = Path(__file__).resolve().parent / "e2e"


async def test_one_transaction_reads_like_a_postfix_log(
    start_relay, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailrelay")
    async with RecordingSink() as sink:
        relay = await start_relay(make_settings(sink.port))
        await relay.send(
            "recruit@acme.co.jp", ["yamada@gmail.example"], (E2E / "rejection_ja_iso2022.eml").read_bytes()
        )
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("mailrelay")]
    assert any(re.fullmatch(r"connect from \[127\.0\.0\.1\]", line) for line in lines), lines
    txn = next(line.split(":")[0] for line in lines if "decision=decorated" in line)
    assert re.fullmatch(r"[0-9A-F]{10}", txn)
    mine = [line for line in lines if line.startswith(f"{txn}: ")]
    assert any("from=<recruit@acme.co.jp>" in line and "rule=ja-" in line for line in mine), mine
    assert any(
        re.search(
            r"to=<y\*\*\*@gmail\.example> status=sent \(250 2\.0\.0 OK\) "
            r"decorated dkim=d=acme\.co\.jp,a=rsa-sha256",
            line,
        )
        for line in mine
    ), mine
    assert any(re.search(r"referral event id=\d+", line) for line in mine), mine
    assert any(line.startswith(f"{txn}: reply=250") for line in mine), mine


def test_json_log_format_is_one_object_per_line() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "json")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("mailrelay.relay").info("%s: from=<%s>", "ABCDEF0123", "recruit@acme.co.jp")
    finally:
        root.handlers[:], root.level = saved
    entry = json.loads(stream.getvalue().strip())
    assert entry == {
        "level": "INFO",
        "logger": "mailrelay.relay",
        "message": "ABCDEF0123: from=<recruit@acme.co.jp>",
    }
