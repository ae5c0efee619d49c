"""The bench's py-spy split charges each sample to the stage the report names (bench/sampling.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import sampling
from bench.sampling import ORDER, RATE_HZ, REST, by_stage, per_message
from mailrelay.store.events import READER, WRITER

LOOP = "thread (101): MainThread"
SESSION = "RelaySession._data (mailrelay/relay.py:508)"
HANDLER = "RelaySMTP._handle_client (mailrelay/smtp/server.py:266)"


def stack(*frames: str, count: int = 1) -> str:
    return ";".join(frames) + f" {count}"


def test_a_stage_counts_wherever_it_is_called_from() -> None:
    raw = "\n".join(
        [
            stack(
                LOOP,
                HANDLER,
                SESSION,
                "Relay.plan (mailrelay/relay.py:271)",
                "dkim_signature (mailrelay/signing.py:174)",
                count=3,
            ),
            stack(
                LOOP,
                HANDLER,
                SESSION,
                "Relay.detect (mailrelay/relay.py:245)",
                "normalise (mailrelay/detection/normalise.py:80)",
            ),
            stack(
                f"thread (102): {WRITER}_0",
                "_worker (concurrent/futures/thread.py:81)",
                "Driver.execute (mailrelay/store/driver.py:137)",
                count=2,
            ),
            stack(f"thread (103): {READER}_0", "_worker (concurrent/futures/thread.py:81)"),
            stack(
                LOOP,
                HANDLER,
                SESSION,
                "Logger.info (logging/__init__.py:1489)",
                "StreamHandler.emit (logging/__init__.py:1113)",
            ),
        ]
    )
    assert by_stage(raw) == {
        "DKIM signing": 3,
        "detection": 1,
        "store, writer thread": 2,
        "store, retry-check thread": 1,
        "logging": 1,
    }


def test_otherwise_the_deepest_layer_is_charged_its_own_work() -> None:
    forward = "_SmtpConnection.data (mailrelay/transport.py:231)"
    raw = "\n".join(
        [
            stack(LOOP, HANDLER, SESSION, forward, "crlf_only (mailrelay/message.py:124)"),
            stack(LOOP, HANDLER, SESSION, forward, "SMTPProtocol.write (aiosmtplib/protocol.py:318)"),
            stack(LOOP, HANDLER, SESSION),
            stack(LOOP, HANDLER, "SMTP.smtp_RCPT (aiosmtpd/smtp.py:1386)"),
            stack(LOOP, "run_on_loop (mailrelay/app.py:277)", "Runner.run (asyncio/runners.py:118)"),
            stack(LOOP),
            "not a sample line",
        ]
    )
    assert by_stage(raw) == {
        "message bytes: parse, text, wire checks": 1,
        "forwarding to the next hop": 1,
        "relay session (envelope, plan, replies)": 1,
        "receiving (SMTP server)": 1,
        REST: 2,
    }


def test_samples_become_ms_per_message_and_every_stage_is_in_the_report_order() -> None:
    counts = by_stage(stack(LOOP, "dkim_signature (mailrelay/signing.py:174)", count=500))
    # a sample stands for 1/RATE_HZ s of holding the GIL: over 100 messages, ms per message
    assert per_message(counts, 100) == {"DKIM signing": 500 * 1000 / RATE_HZ / 100}
    assert set(counts) <= set(ORDER) and ORDER[-1] == REST


def test_a_py_spy_that_takes_no_samples_is_an_error_the_bench_can_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when the kernel does not let py-spy read the workers: it exits at once with an error.
    refused = tmp_path / "py-spy"
    refused.write_text("#!/bin/sh\necho 'Permission Denied' >&2\nexit 1\n")
    refused.chmod(0o755)
    monkeypatch.setattr(sampling, "_py_spy", lambda: str(refused))
    sampler = sampling.Sampler([os.getpid()], tmp_path)
    for proc in sampler.procs:
        proc.wait()
    with pytest.raises(RuntimeError, match="py-spy took no samples: Permission Denied"):
        sampler.stop()
