"""Tracked links: tokens, the click redirect (GET /r/<token>) and the signed registration webhook."""

from mailrelay.tracking.links import link_for
from mailrelay.tracking.webhook import WebhookError, sign, verify

__all__ = ["WebhookError", "link_for", "sign", "verify"]
