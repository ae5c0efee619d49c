"""Part 5: the longest event-loop stall while a pathological message goes through (research §5 B6, B7),
measured by a heartbeat task in the relay's own process and loop."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

from bench.ports import free_port
from tests.reliability.common import PYTHON, REPO, Scale, Section, workdir
from tests.reliability.inproc import SmtpSink, relay_in_process

TARGET_MS = 100.0
TICK = 0.005
HEAD = (
    "From: Acme Recruiting <recruit@acme.co.jp>\r\nTo: applicant@gmail.example\r\n"
    "Subject: =?utf-8?b?6YG46ICD57WQ5p6c44Gu44GU6YCj57Wh?=\r\nMessage-ID: <stall-{name}@acme.co.jp>\r\n"
    "MIME-Version: 1.0\r\n"
)
TEXT = (
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "誠に残念ではございますが、今回は採用を見送らせていただくことになりました。\r\n"
    "今後のご活躍を心よりお祈り申し上げます。\r\n"
)
# The sender is a separate process: an in-loop client would stall the loop it measures.
CLIENT = """
import smtplib, sys
port, path = int(sys.argv[1]), sys.argv[2]
with open(path, "rb") as fh:
    content = fh.read()
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        client.sendmail("recruit@acme.co.jp", ["applicant@gmail.example"], content)
    print("250")
except smtplib.SMTPRecipientsRefused as exc:
    code, text = next(iter(exc.recipients.values()))
    print(code, text.decode(errors="replace"))
except smtplib.SMTPResponseException as exc:
    print(exc.smtp_code, exc.smtp_error.decode(errors="replace"))
except Exception as exc:
    print(type(exc).__name__)
"""


def _multipart(name: str, parts: int) -> bytes:
    body = [HEAD.format(name=name), 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n', "--b\r\n", TEXT]
    body += ["--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"] * (parts - 1)
    body.append("--b--\r\n")
    return "".join(body).encode()


def _nested(name: str, depth: int) -> bytes:
    out = [HEAD.format(name=name)]
    for level in range(depth):
        out.append(f'Content-Type: multipart/mixed; boundary="n{level}"\r\n\r\n--n{level}\r\n')
    out.append(TEXT)
    for level in reversed(range(depth)):
        out.append(f"--n{level}--\r\n")
    return "".join(out).encode()


def _long_header(name: str, size: int) -> bytes:
    return (HEAD.format(name=name) + "X-Long: " + "a" * size + "\r\n" + TEXT).encode()


def _many_addresses(name: str, count: int) -> bytes:
    # Folded, one address per line: each line is short, the header block is ~30 bytes per address.
    addresses = ",\r\n ".join(f"applicant{i}@gmail.example" for i in range(count))
    head = HEAD.format(name=name).replace("To: applicant@gmail.example", f"To: {addresses}")
    return (head + TEXT).encode()


def _attachment(name: str, size: int) -> bytes:
    encoded = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    head = HEAD.format(name=name) + 'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n' + TEXT
    head += "--a\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
    head += 'Content-Disposition: attachment; filename="cv.pdf"\r\n\r\n'
    return head.encode() + encoded + b"--a--\r\n"


async def _measure(relay_port: int, path: Path) -> tuple[float, str, float]:
    """(max gap between heartbeats beyond the tick in ms, the reply, seconds to it)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worst = 0.0

    async def heartbeat() -> None:
        nonlocal worst
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(TICK)
            now = loop.time()
            worst = max(worst, now - last - TICK)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    started = time.monotonic()
    client = await asyncio.create_subprocess_exec(
        PYTHON, "-c", CLIENT, str(relay_port), str(path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await client.communicate()
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.2)  # whatever the relay does after its reply is measured too
    stop.set()
    await beat
    return worst * 1000, out.decode().strip(), elapsed


async def run(scale: Scale, messages: int, section: Section) -> None:
    mb = scale.big_attachment / 2**20
    cases = [
        ("an ordinary rejection (baseline)", _multipart("base", 1)),
        (f"{scale.mime_parts:,} MIME parts", _multipart("parts", scale.mime_parts)),
        (f"nesting {scale.nesting:,} deep", _nested("nested", scale.nesting)),
        (f"a {scale.header_line // 1024:,} KB header line", _long_header("header", scale.header_line)),
        (f"To: with {scale.to_addresses:,} addresses", _many_addresses("to", scale.to_addresses)),
        (f"a {mb:.0f} MB attachment", _attachment("attach", scale.big_attachment)),
    ]
    section.how = (
        "A relay in this process (mailrelay.app.build + start_smtp_server) forwards to Postfix `smtp-sink`; "
        "each message is sent by a separate process (smtplib), while a heartbeat task in the relay's loop "
        f"sleeps {TICK * 1000:.0f} ms at a time and records how late it wakes. The stall is the largest "
        "lateness from connect to 0.2 s after the reply, after one warm-up message."
    )
    rows = []
    over = []
    with workdir("reliability-stall-") as base:
        sink_port = free_port()
        sink = SmtpSink(sink_port, dump=False)
        async with sink, relay_in_process(base / "relay", sink_port, transaction_timeout=120.0) as relay:
            # Warm-up: the first message pays one-time costs in the loop (thread pool, key, lazy imports).
            warm = base / "warm.eml"
            warm.write_bytes(_multipart("warm", 1))
            await _measure(relay.port, warm)
            for index, (label, content) in enumerate(cases):
                path = base / f"case{index}.eml"
                path.write_bytes(content)
                stall_ms, reply, elapsed = await _measure(relay.port, path)
                if index and stall_ms >= TARGET_MS:
                    over.append(label)
                rows.append(
                    f"| {label} | {len(content) / 2**20:.1f} MB | `{reply[:70]}` | {elapsed:.2f} s | "
                    f"{stall_ms:.0f} ms | {'PASS' if stall_ms < TARGET_MS else '**FAIL**'} |"
                )
                section.figure(
                    f"longest stall: {label}",
                    f"{stall_ms:.0f} ms",
                    f"< {TARGET_MS:.0f} ms",
                    stall_ms < TARGET_MS,
                )
        sink.cleanup()
    section.detail += [
        "| message | size | reply to the sender | time to the reply | longest stall | |",
        "|---|---:|---|---:|---:|---|",
        *rows,
        "",
        "Over the cap (`[processing]` max_parts 1000, max_depth 50, max_header_bytes 100 KB) the message is "
        "forwarded unmodified; a line over 998 octets is refused with aiosmtpd's `500 Line too long` "
        "(RFC 5321 §4.5.3.1.6) after the data was read.",
    ]
