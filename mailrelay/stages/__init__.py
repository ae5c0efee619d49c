"""The decoration pipeline: one module per mutation step, applied to each applicant's copy in this order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mailrelay.config import Settings, TenantSettings
from mailrelay.message import ParsedMessage
from mailrelay.signing import DkimSigner

# The whole message flow of a decorated copy, as a table of contents (Mailman's pipeline idea):
PIPELINE = ("referral-link", "footer", "strip-dkim", "mark", "dkim-sign")


@dataclass
class Copy:
    """One applicant's copy of a rejection; stages fill it in and replace `raw`."""

    recipient: str
    tenant: TenantSettings
    rule_id: str
    footer_name: str
    from_domain: str
    parsed: ParsedMessage
    raw: bytes
    token: str = ""
    link: str = ""
    signed_with: list[str] = field(default_factory=list)
    signed_domain: str = ""


Stage = Callable[[Copy], None]


@dataclass(frozen=True)
class StageContext:
    settings: Settings
    signer: DkimSigner


def build_pipeline(context: StageContext, names: tuple[str, ...] = PIPELINE) -> list[tuple[str, Stage]]:
    # Imported here so that each stage module can import Copy from this package.
    from mailrelay.stages import dkim_sign, footer, mark, referral_link, strip_dkim

    factories: dict[str, Callable[[StageContext], Stage]] = {
        "referral-link": referral_link.build,
        "footer": footer.build,
        "strip-dkim": strip_dkim.build,
        "mark": mark.build,
        "dkim-sign": dkim_sign.build,
    }
    return [(name, factories[name](context)) for name in names]
