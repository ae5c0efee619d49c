"""Part 4: open relay (research §5 S1): nmap's smtp-open-relay and swaks against a relay whose client_networks
leave out 127.0.0.0/8, so the scanner on loopback is an outsider."""

from __future__ import annotations

import asyncio
import re

from tests.reliability.common import Scale, Section, workdir
from tests.reliability.inproc import relay_in_process
from tests.support.sinks import RecordingSink, require_tool

OUTSIDE_ONLY = '["192.0.2.0/24"]'  # TEST-NET-1 (RFC 5737): no client of this run is in it


async def _run(*args: str, timeout: float = 120) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    return out.decode("utf-8", "replace")


def rcpt_replies(relay_metrics: object, klass: str) -> int:
    value = relay_metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "mailrelay_smtp_replies_total", {"command": "RCPT", "class": klass}
    )
    return int(value or 0)


async def run(scale: Scale, messages: int, section: Section) -> None:
    nmap = require_tool("nmap", "nmap")
    section.how = (
        'A relay in this process with `client_networks = ["192.0.2.0/24"]`, scanned from 127.0.0.1 by '
        "`nmap -sT -p PORT --script smtp-open-relay` (its 16 address combinations; a private "
        "`--datadir` names the port `smtp`, since nmap only runs the script on ports it believes are SMTP), "
        "then `swaks --quit-after RCPT`. The relay's own counters tell what it answered to every RCPT, "
        "and the next hop (an aiosmtpd sink) counts connections."
    )
    with workdir("reliability-openrelay-") as base:
        async with (
            RecordingSink() as sink,
            relay_in_process(base / "relay", sink.port, client_networks=OUTSIDE_ONLY) as relay,
        ):
            metrics = relay.components.metrics
            datadir = base / "nmap"
            datadir.mkdir()
            (datadir / "nmap-services").write_text(f"smtp\t{relay.port}/tcp\t0.5\n", encoding="ascii")
            nmap_out = await _run(
                nmap,
                "-sT",
                "-Pn",
                "-n",
                "--datadir",
                str(datadir),
                "-p",
                str(relay.port),
                "--script",
                "smtp-open-relay",
                "--script-args",
                "smtp-open-relay.domain=relay.test",
                "127.0.0.1",
            )
            nmap_2xx, nmap_554 = rcpt_replies(metrics, "2xx"), rcpt_replies(metrics, "5xx")
            swaks_out = await _run(
                require_tool("swaks", "swaks"),
                "--server",
                f"127.0.0.1:{relay.port}",
                "--from",
                "someone@outside.example",
                "--to",
                "victim@gmail.example",
                "--quit-after",
                "RCPT",
            )
            total_2xx = rcpt_replies(metrics, "2xx")
        connections = sink.connections
    verdict_line = next((ln.strip("|_ ") for ln in nmap_out.splitlines() if "smtp-open-relay" in ln), "")
    claimed = re.search(r"open relay \((\d+)/(\d+) tests\)", verdict_line)
    nmap_claimed = int(claimed.group(1)) if claimed else 0
    swaks_rcpt = next(
        (
            ln.strip()
            for ln in swaks_out.splitlines()
            if ln.startswith("<") and "RCPT" not in ln and " 5" in ln[:6]
        ),
        "",
    )
    swaks_rcpt = next(
        (ln.lstrip("<~* ").strip() for ln in swaks_out.splitlines() if re.match(r"<\*{0,2}~?\s*554", ln)),
        swaks_rcpt,
    )

    section.figure(
        "open-relay combinations accepted (RCPT answered 2xx to the outsider)",
        f"{total_2xx} (nmap's RCPTs answered 5xx: {nmap_554})",
        "0",
        total_2xx == 0 and connections == 0,
    )
    section.figure(
        "nmap smtp-open-relay verdict",
        verdict_line or "(no verdict)",
        "not an open relay",
        "all tests failed" in verdict_line and nmap_claimed == 0,
    )
    section.figure(
        "swaks --quit-after RCPT",
        swaks_rcpt or "(no 554 seen)",
        "554 5.7.1",
        swaks_rcpt.startswith("554 5.7.1"),
    )
    section.detail += [
        "| check | result |",
        "|---|---|",
        f"| nmap's verdict | `{verdict_line}` |",
        f"| RCPT replies to nmap: 2xx / 5xx (the relay's own counter) | {nmap_2xx} / {nmap_554} |",
        f"| swaks `--quit-after RCPT` | `{swaks_rcpt}` |",
        f"| connections the relay opened to the next hop | {connections} |",
    ]
    section.detail += [
        "",
        "The EHLO reply goes out in one write, as Postfix sends it: nmap's SMTP library takes each TCP "
        "segment for one reply, and with aiosmtpd's line-per-write EHLO it paired later commands with stale "
        "lines and claimed an open relay that the relay's own counters contradicted.",
    ]
