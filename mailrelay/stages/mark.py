"""Stage mark: adds the header that keeps a copy from ever being decorated twice."""

from __future__ import annotations

import re

from mailrelay.message import prepend_headers
from mailrelay.stages import Copy, Stage, StageContext

MARKER_HEADER = "X-Mailrelay-Decorated"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def build(context: StageContext) -> Stage:
    def mark(copy: Copy) -> None:
        # Rule and tenant ids are config data; they still go through a character whitelist because a
        # header value must never carry CR, LF or NUL (header injection).
        value = f"v=1; rule={_UNSAFE.sub('_', copy.rule_id)}; tenant={_UNSAFE.sub('_', copy.tenant.id)}"
        copy.raw = prepend_headers(copy.raw, [f"{MARKER_HEADER}: {value}\r\n".encode("ascii")])

    return mark
