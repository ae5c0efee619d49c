"""Stage strip-dkim: removes the sender domain's DKIM signatures that the footer has broken."""

from __future__ import annotations

import re

from mailrelay.message import remove_header_fields
from mailrelay.signing import a_label
from mailrelay.stages import Copy, Stage, StageContext

_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.IGNORECASE)


def build(context: StageContext) -> Stage:
    def strip_dkim(copy: Copy) -> None:
        # Only the tenant's own signatures go: the body changed, so they fail, and a failing signature of
        # the From domain is worse than none to DMARC-evaluating receivers. Others' stay as they came.
        def drop(name: bytes, value: bytes) -> bool:
            if name != b"dkim-signature":
                return False
            match = _D_TAG.search(b" ".join(value.split()))
            if match is None:
                return False
            domain = match.group(1).decode("ascii", "replace").lower().rstrip(".")
            # d= is in A-labels (RFC 6376 §3.5); a tenant domain may be written in U-labels.
            return copy.tenant.owns(domain) or any(
                domain == d or domain.endswith("." + d) for d in map(a_label, copy.tenant.domains)
            )

        raw = copy.raw
        blank = raw.find(b"\r\n\r\n")
        if b"dkim-signature" not in (raw if blank < 0 else raw[:blank]).lower():
            # No field of that name (this reaches at least as far as the header block): nothing to remove,
            # and no header parse or copy of the message for it (issue 8 profile, ~10 µs a copy).
            return
        copy.raw = remove_header_fields(raw, drop)

    return strip_dkim
