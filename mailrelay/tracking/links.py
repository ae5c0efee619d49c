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


# Request headers by which a browser says it fetches a page ahead of any click (Fetch Metadata's Sec-Purpose;
# Chromium's legacy Purpose, old Firefox's X-Moz, Safari's X-Purpose: preview): they carry a real browser's
# agent, long after delivery, so only these headers tell them from a person.
PREFETCH_HEADERS = ("Sec-Purpose", "Purpose", "X-Moz", "X-Purpose")


def service_url(settings: Settings, token: str) -> str:
    """The referral service's own page for this token: where a click ends up."""
    return settings.referral.base_url + token


def link_for(settings: Settings, tenant: TenantSettings, token: str) -> str:
    """The link written into the applicant's copy."""
    if tenant.link_mode == "click":
        return f"{settings.http.public_url}/r/{token}"
    return service_url(settings, token)


def scanner_reason(method: str, user_agent: str | None, purpose: str = "") -> str | None:
    """Why a request is a scanner's by itself (the time since delivery is checked against the store).
    `purpose`: the values of PREFETCH_HEADERS the request carries."""
    if method == "HEAD":
        return "head"
    if "prefetch" in purpose.lower() or "preview" in purpose.lower():
        return "prefetch"
    agent = (user_agent or "").lower()
    if not agent:
        return "no_agent"
    if any(marker in agent for marker in SCANNER_AGENTS):
        return "agent"
    return None
