"""Stage dkim-sign: signs the finished copy, last, over exactly the bytes that go on the wire."""

from __future__ import annotations

from mailrelay.message import prepend_headers
from mailrelay.stages import Copy, Stage, StageContext


def build(context: StageContext) -> Stage:
    signer = context.signer

    def dkim_sign(copy: Copy) -> None:
        domain = signer.signing_domain(copy.tenant, copy.from_domain)
        lines, algorithms = signer.sign(copy.raw, copy.tenant, domain)
        copy.raw = prepend_headers(copy.raw, [lines])
        copy.signed_with = algorithms
        copy.signed_domain = domain

    return dkim_sign
