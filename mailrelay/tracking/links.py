"""Where a token's link points, per the tenant's link mode; and which clicks are link scanners'."""

from __future__ import annotations

import re

from mailrelay.config import Settings, TenantSettings

# The token the relay mints (secrets.token_urlsafe(16)): only these characters, so nothing else is looked up.
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")

# User agents of link scanners and prefetchers (mautic#9162, EmailEngine PR #349, Collie PR #50): such a
# click is recorded but flagged, so KPIs count people. Lower-case substrings.
SCANNER_AGENTS = (
    "bot",
    "crawler",
    "spider",
    "headless",
    "preview",
    "scanner",
    "barracuda",
    "mimecast",
    "proofpoint",
    "safelinks",
    "microsoft office",
    "ms-office",
    "google-safety",
    "googleimageproxy",
    "symantec",
    "trendmicro",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "java/",
    "okhttp",
)


def service_url(settings: Settings, token: str) -> str:
    """The referral service's own page for this token: where a click ends up."""
    return settings.referral.base_url + token


def link_for(settings: Settings, tenant: TenantSettings, token: str) -> str:
    """The link written into the applicant's copy."""
    if tenant.link_mode == "click":
        return f"{settings.http.public_url}/r/{token}"
    return service_url(settings, token)


def scanner_reason(method: str, user_agent: str | None) -> str | None:
    """Why a request is a scanner's by itself (the time since delivery is checked against the store)."""
    if method == "HEAD":
        return "head"
    agent = (user_agent or "").lower()
    if not agent:
        return "no_agent"
    if any(marker in agent for marker in SCANNER_AGENTS):
        return "agent"
    return None
