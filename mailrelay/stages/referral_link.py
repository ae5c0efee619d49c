"""Stage referral-link: mints the applicant's unguessable token and personal link."""

from __future__ import annotations

import secrets

from mailrelay.stages import Copy, Stage, StageContext


def new_token() -> str:
    """128 random bits, URL-safe: no personal data in it, nothing to guess (RFC 4086 §3)."""
    return secrets.token_urlsafe(16)


def build(context: StageContext) -> Stage:
    base_url = context.settings.referral.base_url

    def referral_link(copy: Copy) -> None:
        copy.token = new_token()
        copy.link = base_url + copy.token

    return referral_link
