"""The bench's ablation (bench/ablation.py): each variant takes out its stage, and only it, in the workers
that `serve --workers 2` spawns; the unchanged relay keeps every stage (issue 8)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosmtplib
import pytest

from bench import servers
from bench.ablation import VARIANTS, ablate
from bench.messages import RECIPIENT, SENDER, SHAPES, write_all
from support.sinks import RecordingSink

LINK = b"careerrelay.jp/r/"


def events(workdir: Path) -> int:
    with sqlite3.connect(workdir / "mailrelay" / "mailrelay.db") as db:
        count: int = db.execute("SELECT count(*) FROM referral_events").fetchone()[0]
        return count


async def test_each_variant_takes_out_its_stage_in_the_workers(tmp_path: Path) -> None:
    rejection = write_all(tmp_path / "messages")[SHAPES[0].name, True].read_bytes()
    variants = [(), *[(name,) for name in VARIANTS]]
    workdirs = [tmp_path / (without[0] if without else "none") for without in variants]
    async with RecordingSink() as sink:
        # Started at once (each takes seconds); `serve --workers 2` spawns the workers that must be ablated.
        relays = await asyncio.gather(
            *(
                asyncio.to_thread(servers.start_mailrelay, workdir, sink.port, 2, "INFO", without)
                for workdir, without in zip(workdirs, variants, strict=True)
            )
        )
        try:
            received = []
            for relay in relays:
                before = len(sink.messages)
                # The same message twice, each on a connection of its own: a retry, as an MTA makes one.
                for _attempt in range(2):
                    await aiosmtplib.send(
                        rejection,
                        sender=SENDER,
                        recipients=[RECIPIENT],
                        hostname="127.0.0.1",
                        port=relay.port,
                    )
                received.append([m.content for m in sink.messages[before:]])
        finally:
            await asyncio.gather(*(asyncio.to_thread(relay.stop) for relay in relays))
    for without, workdir, copies in zip(variants, workdirs, received, strict=True):
        # The retry is answered "already delivered" from the record; without either, it goes out again.
        assert len(copies) == (2 if {"record", "retry-check"} & set(without) else 1), without
        for copy in copies:
            assert (b"\r\nDKIM-Signature:" in b"\r\n" + copy) == ("sign" not in without), without
            assert (LINK in copy) == ("decoration" not in without), without
        assert events(workdir) == (0 if "record" in without else 1), without


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        ablate({"sign", "detection"})
