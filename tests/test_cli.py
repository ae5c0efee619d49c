"""The command line a mail admin uses: serve on the embedded defaults, check, preview."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import uvloop

from conftest import REPO, KeyPairs, SettingsFactory
from mailrelay.app import event_loop_factory
from mailrelay.cli import main
from support.dkim import verify_dkim

E2E = Path(__file__).resolve().parent / "e2e"


def _wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _readme_try_it() -> str:
    """The README's "Try it" swaks command, as a newcomer pastes it."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("Try it from another shell:\n\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(block.split("\n    ls ", 1)[0])  # `ls var/outbox/` follows the command


def test_serve_on_embedded_defaults_delivers_into_the_outbox(tmp_path: Path) -> None:
    """The README's first command: no config given, SQLite, shipped rules, demo key, var/outbox; and its
    "Try it" swaks command, a Japanese rejection in UTF-8 without MIME headers (review found it was not
    decorated: detection read the undeclared 8-bit text as us-ascii)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrelay", "serve"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for_port(10025, time.monotonic() + 20)
        swaks = subprocess.run(
            ["bash", "-c", _readme_try_it()], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert "<-  250" in swaks.stdout, swaks.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "event loop uvloop" in output  # --loop auto, with uvloop installed as a dependency (issue 8)
    outbox = tmp_path / "var" / "outbox"
    [eml] = sorted(outbox.glob("*.eml"))
    delivered = eml.read_bytes()
    assert b"https://careerrelay.jp/r/" in delivered
    envelope = json.loads(eml.with_suffix(".json").read_text())
    assert envelope == {"mail_from": "hr@example.co.jp", "rcpt_tos": ["applicant@gmail.example"]}
    assert (tmp_path / "var" / "mailrelay.db").exists()
    key = tmp_path / "var" / "dkim" / "example.mailrelay.key"
    assert key.stat().st_mode & 0o777 == 0o600
    txt = next(line for line in output.splitlines() if "made demo DKIM key" in line).rsplit(": ", 1)[1]
    assert verify_dkim(
        delivered, {"mailrelay._domainkey.example.co.jp": txt}, require_domain="example.co.jp"
    ).passed


def test_serve_loop_choice_picks_the_event_loop() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_check_json_gives_verdict_per_file(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    files = [str(E2E / "rejection_ja_iso2022.eml"), str(E2E / "offer_ja.eml")]
    assert main(["check", "--config", str(settings.source), "--json", *files]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["file"], x["rejection"]) for x in lines] == [(files[0], True), (files[1], False)]
    assert lines[0]["rule"] and lines[1]["rule"] is None


def test_check_explain_names_rule_and_phrases(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    assert main(["check", "--config", str(settings.source), "--explain", str(E2E / "rejection_en.eml")]) == 0
    out = capsys.readouterr().out
    assert "rejection (rule " in out
    assert "move forward with other candidates" in out.lower() or "regret to inform you" in out.lower()


def test_preview_writes_the_exact_bytes_for_one_recipient(
    make_settings: SettingsFactory, keys: KeyPairs, tmp_path: Path
) -> None:
    settings = make_settings()
    result = subprocess.run(
        [sys.executable, "-m", "mailrelay", "preview", "--config", str(settings.source),
         "--rcpt", "applicant@gmail.example", str(E2E / "rejection_en.eml")],
        capture_output=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"decorated" in result.stderr
    assert b"https://careerrelay.jp/r/" in result.stdout
    assert verify_dkim(result.stdout, keys.dns(), require_domain="acme.co.jp").passed
    internal = subprocess.run(
        [sys.executable, "-m", "mailrelay", "preview", "--config", str(settings.source),
         "--rcpt", "hr@acme.co.jp", str(E2E / "rejection_en.eml")],
        capture_output=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert internal.stdout == (E2E / "rejection_en.eml").read_bytes()


def test_preview_of_a_file_it_cannot_read_says_so_in_one_line(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `check` does; it was a FileNotFoundError traceback."""
    settings = make_settings()
    missing = tmp_path / "missing.eml"
    status = main(["preview", "--config", str(settings.source), "--rcpt", "a@gmail.example", str(missing)])
    captured = capsys.readouterr()
    assert (status, captured.out, captured.err) == (
        1,
        "",
        f"{missing}: cannot read: No such file or directory\n",
    )
