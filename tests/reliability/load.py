"""The retrying sender of the load runs: N sessions with aiosmtplib, each message retried until it gets 250,
like an MTA keeps a message queued until the next hop takes responsibility (RFC 5321 §4.5.4.1)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiosmtplib

from tests.reliability.common import SENDER, message


@dataclass(frozen=True)
class Job:
    message_id: str
    kind: str  # "rejection" or "ordinary"
    recipient: str

    def content(self) -> bytes:
        return message(self.kind, self.message_id, self.recipient)


def make_jobs(run: str, count: int, rejection_every: int) -> list[Job]:
    """Unique Message-IDs and applicants (a repeat applicant would be deduped as one referral, by design)."""
    jobs = []
    for i in range(count):
        kind = "rejection" if i % rejection_every == 0 else "ordinary"
        jobs.append(Job(f"rel-{run}-{i}@acme.co.jp", kind, f"applicant-{run}-{i}@gmail.example"))
    return jobs


@dataclass
class LoadStats:
    acked: dict[str, float] = field(default_factory=dict)  # Message-ID → monotonic time of its 250
    attempts: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # what the retried attempts got
    permanent: list[str] = field(default_factory=list)  # 5xx replies: a real MTA would have bounced
    in_transaction: set[int] = field(default_factory=set)  # sessions between MAIL and the final reply
    started: float = 0.0
    finished: float = 0.0


def _describe(exc: BaseException) -> tuple[str, int | None]:
    code = getattr(exc, "code", None)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        code = exc.recipients[0].code
    if isinstance(code, int) and code > 0:
        message = getattr(exc, "message", "")
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            message = exc.recipients[0].message
        return f"{code} {str(message)[:60]}", code
    return type(exc).__name__, None


async def run_load(host: str, port: int, jobs: list[Job], sessions: int, stats: LoadStats) -> None:
    """Send every job; returns when each one was answered 250 once."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def session(number: int) -> None:
        client: aiosmtplib.SMTP | None = None
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            content = job.content()
            failures = 0
            while True:
                stats.attempts += 1
                try:
                    if client is None or not client.is_connected:
                        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=60)
                        await client.connect()
                    stats.in_transaction.add(number)
                    try:
                        await client.sendmail(SENDER, [job.recipient], content)
                    finally:
                        stats.in_transaction.discard(number)
                    stats.acked[job.message_id] = time.monotonic()
                    break
                except (aiosmtplib.SMTPException, OSError) as exc:
                    what, code = _describe(exc)
                    stats.failures[what.split(" ")[0] if code else what] += 1
                    if code is not None and code >= 500:
                        stats.permanent.append(what)
                    stats.retries += 1
                    failures += 1
                    if client is not None:
                        client.close()
                    client = None
                    # A short, jittered backoff: the relay may be restarting (a real MTA waits minutes).
                    await asyncio.sleep(min(1.0, 0.05 * 2**failures) * random.uniform(0.5, 1.0))
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    stats.started = time.monotonic()
    await asyncio.gather(*(session(n) for n in range(sessions)))
    stats.finished = time.monotonic()
