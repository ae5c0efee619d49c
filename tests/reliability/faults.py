"""Part 2: the next hop misbehaves (research §5 F3–F6), with Postfix's smtp-sink fault options; then it comes
back healthy on the same port and the sender's retry is delivered exactly once."""

from __future__ import annotations

import time

from bench.ports import free_port
from tests.reliability.common import SENDER, Scale, Section, message, message_id_of, workdir
from tests.reliability.inproc import SmtpSink, relay_in_process

NEXT_HOP_TIMEOUT = 2.0
# (what the next hop does, smtp-sink options, the class of reply the sender must get)
MODES: list[tuple[str, list[str], str]] = [
    ("4xx to the final dot (`-r .`)", ["-r", "."], "4"),
    ("5xx to the final dot (`-f .`)", ["-f", "."], "5"),
    ("hangs up after the data (`-q .`)", ["-q", "."], "4"),
    ("no final reply (`-W .:3600`)", ["-W", ".:3600"], "4"),
    ("421 to MAIL and hangs up (`-Q MAIL`)", ["-Q", "MAIL"], "4"),
    ("not listening (connection refused)", [], "4"),
]
LEAKS = ("Traceback", "Exception", "mailrelay.", "127.0.0.1", "password")


async def run(scale: Scale, messages: int, section: Section) -> None:
    section.how = (
        "A relay in this process forwards a rejection (decorated, signed, recorded) to `smtp-sink` started "
        f"with each fault option (next_hop.timeout = {NEXT_HOP_TIMEOUT:.0f} s, transaction_timeout = 5 s). "
        "Then the faulty sink is replaced by a healthy one on the same port and the sender retries the same "
        "message: the next hop must then hold exactly one copy, and the store one event."
    )
    rows = []
    wrong, leaked, not_once = 0, 0, 0
    with workdir("reliability-faults-") as base:
        for index, (label, options, expected) in enumerate(MODES):
            port = free_port()
            recipient = f"applicant-f{index}@gmail.example"
            content = message("rejection", f"rel-fault-{index}@acme.co.jp", recipient)
            config = {"timeout": NEXT_HOP_TIMEOUT, "transaction_timeout": 5.0}
            async with relay_in_process(base / f"mode{index}", port, **config) as relay:
                started = time.monotonic()
                if options:
                    sink = SmtpSink(port, *options)
                    async with sink:
                        reply = await relay.send(SENDER, [recipient], content)
                    sink.cleanup()
                else:
                    reply = await relay.send(SENDER, [recipient], content)
                elapsed = time.monotonic() - started
                events_after_fault = relay.events()
                ok = reply[:1] == expected and not reply.startswith("250")
                wrong += not ok
                leaked += any(leak in reply for leak in LEAKS)
                retry = "– (5xx: the sender bounces)"
                if expected == "4":
                    healthy = SmtpSink(port)
                    async with healthy:
                        retry_reply = await relay.send(SENDER, [recipient], content)
                        copies = sum(
                            1
                            for m in healthy.messages()
                            if message_id_of(_crlf(m.content)) == message_id_of(content)
                        )
                    healthy.cleanup()
                    once = retry_reply.startswith("250") and copies == 1 and relay.events() == 1
                    not_once += not once
                    noun = "copy" if copies == 1 else "copies"
                    retry = f"{retry_reply[:3]}; {copies} {noun}, {relay.events()} event"
                rows.append(
                    f"| {label} | `{reply}` | {elapsed:.2f} s | {events_after_fault} | {retry} | "
                    f"{'PASS' if ok else '**FAIL**'} |"
                )
    section.figure(
        "faults answered with the right class (4xx / 5xx), never 250",
        f"{len(MODES) - wrong} of {len(MODES)}",
        "all",
        wrong == 0,
    )
    section.figure("replies leaking internals", leaked, "0", leaked == 0)
    transient = sum(1 for m in MODES if m[2] == "4")
    section.figure(
        "retries delivered exactly once when the next hop is back",
        f"{transient - not_once} of {transient}",
        "all",
        not_once == 0,
    )
    section.detail += [
        "| next hop | reply to the sender | time to that reply "
        "| events after the fault | retry once healthy | |",
        "|---|---|---:|---:|---|---|",
        *rows,
    ]


def _crlf(content: bytes) -> bytes:
    # smtp-sink dumps with LF line ends; message_id_of reads a CRLF header block.
    return content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
