"""mailrelay with one of a rejection's stages taken out: what each stage costs in place, under load (issue 8).

`python -m bench.ablation serve ...` is `mailrelay serve ...` without the stages named in the environment
variable MAILRELAY_BENCH_ABLATE (comma-separated VARIANTS keys). Only the benchmark starts it, each variant
beside an unchanged relay, to read a stage's cost as the CPU per message it saves: the micro-benchmarks time a
stage alone in one process, and miss what it costs around it (the GIL and thread hand-offs, the caches it
evicts, the copies and checks it causes downstream). A relay so changed must never carry real mail: it would
forward rejections unsigned, undecorated or unrecorded.

`serve --workers N` starts its workers with multiprocessing's "spawn", which imports this module again in
each of them (as `__mp_main__`) before they build anything: the patches below are applied at import, so
they hold in every worker.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ABLATE = "MAILRELAY_BENCH_ABLATE"

# What each variant leaves out, as the report names it.
VARIANTS = {
    "sign": "the DKIM signature",
    "record": "the referral record",
    "decoration": "decoration",
    "retry-check": "the retry check",
}


def ablate(names: set[str]) -> None:
    """Take the named stages out of mailrelay in this process (before it builds its pipeline)."""
    unknown = names - set(VARIANTS)
    if unknown:
        raise ValueError(f"{ABLATE}: unknown stage(s) {', '.join(sorted(unknown))}")
    if not names:
        return
    from mailrelay.relay import RelaySession
    from mailrelay.stages import Copy, Stage, StageContext, dkim_sign, footer
    from mailrelay.store.events import EventStore

    def unchanged(context: StageContext) -> Stage:  # `context`: mypy compares it with the builders' name
        def stage(_copy: Copy) -> None:
            return None

        return stage

    if "sign" in names:
        dkim_sign.build = unchanged  # the copy goes out decorated, unsigned
    if "decoration" in names:
        footer.build = unchanged  # the copy goes out as received (with its link made), signed
    if "record" in names:

        async def record_nothing(*_args: Any, **_kwargs: Any) -> list[int]:
            return []  # as if written: no journal either

        EventStore.record_events = record_nothing  # type: ignore[method-assign]
    if "retry-check" in names:

        async def delivered_to_nobody(*_args: Any, **_kwargs: Any) -> set[str]:
            return set()

        RelaySession._start_store_read = lambda *_args, **_kwargs: None  # type: ignore[method-assign]
        RelaySession._read_delivered = delivered_to_nobody  # type: ignore[method-assign]


# Only as the relay's entry point or in the workers it spawns: the benchmark imports this module for its
# names, and its own in-process micro-benchmarks must keep every stage whatever its environment holds.
if __name__ in ("__main__", "__mp_main__"):
    ablate({name for name in os.environ.get(ABLATE, "").split(",") if name})

if __name__ == "__main__":
    from mailrelay.cli import main

    sys.exit(main())
