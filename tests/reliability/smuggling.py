"""Part 3: SMTP smuggling (research §5 B1): six end-of-data variants, each followed by a smuggled second
transaction, sent as exact bytes; the next hop must see one message per session and no bare CR or LF."""

from __future__ import annotations

from tests.reliability.common import BARE_NEWLINE, Scale, Section, workdir
from tests.reliability.inproc import relay_in_process
from tests.support.sinks import RecordingSink, send_raw_smtp

VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n"]
HEAD = (
    b"From: recruit@acme.co.jp\r\nTo: applicant@gmail.example\r\nSubject: outer\r\n"
    b"Message-ID: <outer@acme.co.jp>\r\n\r\n"
)
SMUGGLED = (
    b"MAIL FROM:<ceo@acme.co.jp>\r\nRCPT TO:<victim@gmail.example>\r\nDATA\r\n"
    b"From: ceo@acme.co.jp\r\nSubject: SMUGGLED\r\n\r\nwire the money\r\n"
)


async def run(scale: Scale, messages: int, section: Section) -> None:
    section.how = (
        "For each variant, one raw-socket session to a relay in this process: `MAIL`, `RCPT`, `DATA`, then "
        "`outer body<variant>MAIL FROM:<ceo@…>RCPT TO:<victim@…>DATA…SMUGGLED…CRLF.CRLF`, then `QUIT`. The "
        "next hop is an aiosmtpd sink that records every transaction and its exact bytes."
    )
    rows = []
    extra, bare_total = 0, 0
    with workdir("reliability-smuggling-") as base:
        for index, end in enumerate(VARIANTS):
            async with RecordingSink() as sink, relay_in_process(base / f"v{index}", sink.port) as relay:
                replies = await send_raw_smtp(
                    "127.0.0.1",
                    relay.port,
                    [
                        b"EHLO client.test\r\n",
                        b"MAIL FROM:<recruit@acme.co.jp>\r\n",
                        b"RCPT TO:<applicant@gmail.example>\r\n",
                        b"DATA\r\n",
                        HEAD + b"outer body" + end + SMUGGLED + b".\r\n",
                        b"QUIT\r\n",
                    ],
                    # The helper expects a reply per smuggled command line too; 1 s is plenty locally.
                    timeout=1,
                )
            transactions = len(sink.messages)
            mails = [e for e in sink.events if e[0] == "MAIL"]
            bare = sum(len(BARE_NEWLINE.findall(m.content)) for m in sink.messages)
            victims = sum(1 for m in sink.messages if "victim@gmail.example" in m.rcpt_tos)
            extra += max(0, transactions - 1) + victims
            bare_total += bare
            after = (
                [r for r in replies[[r[:3] for r in replies].index(b"354") + 1 :]]
                if any(r[:3] == b"354" for r in replies)
                else []
            )
            final = after[0].decode("ascii", "replace") if after else "(none)"
            ok = transactions == 1 and len(mails) == 1 and bare == 0 and victims == 0
            rows.append(
                f"| `{end!r}` | {transactions} | {len(mails)} | {victims} | {bare} | `{final}` | "
                f"{'PASS' if ok else '**FAIL**'} |"
            )
    section.figure(
        "smuggling variants giving an extra message",
        f"{extra} of {len(VARIANTS)}",
        f"0 of {len(VARIANTS)}",
        extra == 0,
    )
    section.figure("bare CR / LF bytes reaching the next hop", bare_total, "0", bare_total == 0)
    section.detail += [
        "| end of data | messages at the next hop | MAIL "
        "commands it saw | to the victim | bare CR/LF bytes | "
        "reply to the final dot | |",
        "|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        "The smuggled commands stay inside the one message as text; the relay turns every bare CR or LF into "
        "CRLF before detection and signing, so what the next hop gets has none.",
    ]
