"""The next hop of the load runs: an aiosmtpd sink that appends each accepted message to a file, then 250s.

    python -m tests.reliability.sink PORT FILE

One line per recipient: Message-ID, recipient, 1 if the copy carries X-Mailrelay-Decorated else 0. The line
is written and flushed before the 250, so the file holds every message this next hop took responsibility
for (the sink is never killed; the relay is).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import IO

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.reliability.common import message_id_of


class Handler:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        decorated = "1" if b"\nX-Mailrelay-Decorated:" in b"\n" + head else "0"
        message_id = message_id_of(content)
        for recipient in envelope.rcpt_tos:
            self.out.write(f"{message_id}\t{recipient}\t{decorated}\n")
        self.out.flush()
        return "250 2.0.0 Ok: queued"


async def main(port: int, path: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with open(path, "a", encoding="utf-8") as out:
        handler = Handler(out)
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.reliability.test", decode_data=False, loop=loop),
            "127.0.0.1",
            port,
            backlog=1024,
        )
        await stop.wait()
        server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
