"""Stage referral-link: mints the applicant's unguessable token and personal link."""

from __future__ import annotations

import secrets

from mailrelay.stages import Copy, Stage, StageContext
from mailrelay.tracking import link_for


def new_token() -> str:
    """128 random bits, URL-safe: no personal data in it, nothing to guess (RFC 4086 §3)."""
    return secrets.token_urlsafe(16)


def build(context: StageContext) -> Stage:
    settings = context.settings

    def referral_link(copy: Copy) -> None:
        copy.token = new_token()
        # "direct" to the referral service, or "click" through our own /r/<token> (issue 6, per tenant).
        copy.link = link_for(settings, copy.tenant, copy.token)

    return referral_link
