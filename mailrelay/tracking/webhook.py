"""Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`.

Several secrets may be configured and several signatures sent (rotation); the timestamp must be inside the
tolerance (replays); comparisons are constant-time (standard-webhooks spec, issue 6)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"


class WebhookError(Exception):
    """The delivery is not from the referral service (or is a replay): answer 401, change nothing."""


def secret_bytes(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one delivery (what the referral service sends; used by tests)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float
) -> str:
    """The delivery's webhook-id, if one of its signatures matches one of `secrets`; else WebhookError."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not stamp or not signatures or len(msg_id) > 256:
        raise WebhookError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        # The signed string is UTF-8. aiohttp hands a header that is not over with surrogate escapes: no
        # sender signed that, and sign() could not encode it (an unauthenticated 500 before).
        msg_id.encode()
    except UnicodeEncodeError as exc:
        raise WebhookError("webhook-id is not UTF-8") from exc
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookError("webhook-timestamp is not a number") from exc
    if abs(now - timestamp) > tolerance:
        raise WebhookError("webhook-timestamp outside the tolerance")
    expected = [sign(secret, msg_id, timestamp, body).encode() for secret in secrets]
    for candidate in signatures.split():
        version, _, _value = candidate.partition(",")
        if version != "v1":
            continue
        given = candidate.encode("ascii", "replace")
        # No early exit on the first secret: every configured one is compared.
        if any([hmac.compare_digest(given, e) for e in expected]):
            return msg_id
    raise WebhookError("no valid signature")
