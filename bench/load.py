"""Load generators: smtp-source for throughput, and a small asyncio client that times each final reply."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# The offered load of the paced latency runs: below what every contestant carries at 10 sessions on 2 cores
# (mailrelay's rejections, the slowest, ~200 msg/s), so each message's time is measured, not a queue.
PACED_RATE = 100.0


class SmtpError(Exception):
    pass


@dataclass
class LoadResult:
    messages: int
    seconds: float
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, end of data → final reply
    detail: str = ""


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        if line[3:4] != b"-":
            return line


async def _session(
    port: int,
    payload: bytes,
    sender: str,
    prefix: str,
    counter: itertools.count[int],
    total: int,
    result: LoadResult,
    pace: tuple[float, float] | None = None,
) -> None:
    """`pace` = (start, msg/s): message n is not begun before start + n / rate (an offered load)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"EHLO bench.client\r\n")
        await _reply(reader)
        while (n := next(counter)) < total:
            if pace is not None:
                delay = pace[0] + n / pace[1] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            # A recipient of its own per message (prefix: one per run), like smtp-source -N: the relay's
            # dedupe of retried messages (same bytes, same recipient) must not answer from its marks.
            writer.write(b"MAIL FROM:<" + sender.encode() + b">\r\n")
            if not (await _reply(reader)).startswith(b"250"):
                raise SmtpError("MAIL refused")
            writer.write(f"RCPT TO:<{prefix}{n}.applicant@gmail.example>\r\n".encode())
            if not (await _reply(reader)).startswith(b"250"):
                raise SmtpError("RCPT refused")
            writer.write(b"DATA\r\n")
            if not (await _reply(reader)).startswith(b"354"):
                raise SmtpError("DATA refused")
            # Its own Message-ID too: the relay fingerprints sender + bytes for retry dedupe, and real HR
            # mail to different applicants differs; a stream of identical bytes would grow one fingerprint's
            # row set in the event store without end.
            writer.write(payload.replace(b"<bench-", f"<bench-{prefix}{n}-".encode(), 1))
            await writer.drain()
            started = time.perf_counter()
            reply = await _reply(reader)
            if reply.startswith(b"250"):
                result.latencies.append(time.perf_counter() - started)
            else:
                result.errors += 1
                result.detail = reply.decode("ascii", "replace").strip()
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def _latency_run(
    port: int, payload: bytes, sender: str, prefix: str, sessions: int, total: int, rate: float | None
) -> LoadResult:
    result = LoadResult(messages=total, seconds=0.0)
    counter = itertools.count()
    started = time.perf_counter()
    pace = None if rate is None else (started, rate)
    outcomes = await asyncio.gather(
        *(_session(port, payload, sender, prefix, counter, total, result, pace) for _ in range(sessions)),
        return_exceptions=True,
    )
    result.seconds = time.perf_counter() - started
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors += 1
            result.detail = f"{type(outcome).__name__}: {outcome}"
    result.messages = len(result.latencies)
    return result


_runs = itertools.count()


def latency_run(
    port: int, payload: bytes, sender: str, sessions: int, total: int, rate: float | None = None
) -> LoadResult:
    """`sessions` clients send `total` messages as fast as replies come back (closed loop), or, with
    `rate`, at that offered load in msg/s, so that what is measured is the time per message, not the
    queue in front of a saturated server."""
    return asyncio.run(_latency_run(port, payload, sender, f"l{next(_runs)}-", sessions, total, rate))


def smtp_source(
    port: int, message: Path, sender: str, recipient: str, sessions: int, total: int
) -> LoadResult:
    """Postfix's smtp-source: C, cheap, so the load generator takes as little of the 2 cores as possible.
    -N gives each message its own recipient (see _session; with a prefix per run, as -N counts from 1
    again); -d keeps one connection per session for many messages, like an MTA's connection cache toward
    a relayhost."""
    command = [
        "smtp-source",
        "-d",
        "-N",
        "-s",
        str(sessions),
        "-m",
        str(total),
        "-F",
        str(message),
        "-f",
        sender,
        "-t",
        f"s{next(_runs)}-{recipient}",
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    errors = 0 if done.returncode == 0 and not done.stderr.strip() else 1
    return LoadResult(messages=total, seconds=seconds, errors=errors, detail=done.stderr.strip()[-300:])
