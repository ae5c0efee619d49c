"""The click redirect and the registration webhook over real HTTP (aiohttp on loopback), on SQLite and
PostgreSQL: 307 to the service for a token we issued, 404 and no redirect for anything else, scanner clicks
flagged, Standard Webhooks signatures with rotation, replay window and idempotency."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select, text, update
from test_store import db_url, referral

from conftest import SettingsFactory
from mailrelay.config import HttpSettings, Settings
from mailrelay.metrics import Metrics
from mailrelay.store import EventStore
from mailrelay.store.models import Click, ReferralEvent, Registration
from mailrelay.tracking import link_for, sign, verify
from mailrelay.tracking.http import MAX_WEBHOOK_BODY, WEBHOOK_PATH, build_app
from mailrelay.tracking.webhook import WebhookError

__all__ = ["db_url"]  # fixture

OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()
TOKEN = "AbCdEfGhIjKlMnOpQrStUv"  # the shape of secrets.token_urlsafe(16)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@dataclass
class Tracking:
    base: str
    store: EventStore
    metrics: Metrics
    settings: Settings
    http: aiohttp.ClientSession

    def count(self, model: type[Click] | type[Registration]) -> int:
        return int(self.store.transaction(lambda s: s.scalar(select(func.count(model.id)))) or 0)

    async def webhook(
        self,
        body: bytes,
        *,
        secret: str = NEW_SECRET,
        msg_id: str = "msg_1",
        stamp: int | None = None,
        signature: str | None = None,
    ) -> aiohttp.ClientResponse:
        ts = int(time.time()) if stamp is None else stamp
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature or sign(secret, msg_id, ts, body),
            "Content-Type": "application/json",
        }
        return await self.http.post(self.base + WEBHOOK_PATH, data=body, headers=headers)


def registration(token: str = TOKEN) -> bytes:
    return json.dumps(
        {"type": "registration.created", "timestamp": "2026-03-01T00:00:00Z", "data": {"token": token}}
    ).encode()


@pytest.fixture
async def tracking(db_url: str, make_settings: SettingsFactory) -> AsyncIterator[Tracking]:
    settings = dataclasses.replace(
        make_settings(),
        http=HttpSettings(public_url="https://go.acme.example", webhook_secrets=(OLD_SECRET, NEW_SECRET)),
    )
    store = EventStore(db_url)
    store.create_schema()
    await store.record([referral(TOKEN, "a" * 64)], mark_delivered=False)
    metrics = Metrics()
    # No access log, as the relay runs it (start_tracking_server): its lines carry the token in the path.
    runner = web.AppRunner(build_app(lambda: settings, store, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        yield Tracking(f"http://127.0.0.1:{port}", store, metrics, settings, http)
    await runner.cleanup()
    store.close()


def delivered_an_hour_ago(t: Tracking) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    t.store.transaction(lambda s: s.execute(update(ReferralEvent).values(created_at=an_hour_ago)))


async def test_a_click_is_recorded_and_redirected_to_the_service(tracking: Tracking) -> None:
    delivered_an_hour_ago(tracking)
    response = await tracking.http.get(
        f"{tracking.base}/r/{TOKEN}?next=https://evil.example/",
        allow_redirects=False,
        headers={"User-Agent": FIREFOX},
    )
    assert response.status == 307
    # The target comes from the configured service URL and the stored token, never from the request.
    assert response.headers["Location"] == f"https://careerrelay.jp/r/{TOKEN}"
    clicks = tracking.store.transaction(lambda s: list(s.scalars(select(Click))))
    assert [(c.scanner, c.tenant_id, c.user_agent) for c in clicks] == [(False, "acme", FIREFOX)]
    assert tracking.metrics.clicks.labels(tenant="acme", kind="person")._value.get() == 1


@pytest.mark.parametrize(
    "path",
    [
        "/r/AbCdEfGhIjKlMnOpQrStUw",  # one character changed
        "/r/unknown-token-unknown-token",
        "/r/https:%2F%2Fevil.example%2F",
        "/r/%2F%2Fevil.example",
        "/r/" + "A" * 200,
        "/r/",
        f"/r/{TOKEN}/x",
    ],
)
async def test_an_unknown_or_tampered_token_gets_404_and_no_redirect(tracking: Tracking, path: str) -> None:
    response = await tracking.http.get(tracking.base + path, allow_redirects=False)
    assert response.status == 404
    assert "Location" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert tracking.count(Click) == 0
    assert tracking.metrics.tracking_refused.labels(reason="unknown_token")._value.get() == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", f"/r/{TOKEN}"), ("PUT", "/r/"), ("GET", WEBHOOK_PATH), ("DELETE", WEBHOOK_PATH)],
)
async def test_a_wrong_method_gets_405_and_is_counted(tracking: Tracking, method: str, path: str) -> None:
    # aiohttp's router answers these before any handler of ours runs: nothing counted them.
    response = await tracking.http.request(method, tracking.base + path, allow_redirects=False)
    assert response.status == 405
    assert tracking.metrics.tracking_refused.labels(reason="method_not_allowed")._value.get() == 1
    assert tracking.count(Click) == 0


async def test_no_answer_names_the_server_software(tracking: Tracking) -> None:
    # The click endpoint is public: a version in `Server` tells a scanner which advisories to try.
    delivered_an_hour_ago(tracking)
    answers = [
        await tracking.http.get(f"{tracking.base}/r/{TOKEN}", allow_redirects=False),
        await tracking.http.get(f"{tracking.base}/r/unknown-token-unknown-token"),
        await tracking.http.get(f"{tracking.base}/r/a/b"),
        await tracking.http.post(f"{tracking.base}/r/{TOKEN}"),
        await tracking.http.post(tracking.base + WEBHOOK_PATH, data=registration()),
    ]
    assert [a.status for a in answers] == [307, 404, 404, 405, 401]
    for answer in answers:
        server = answer.headers.get("Server", "").lower()
        assert "python" not in server and "aiohttp" not in server, server


async def test_scanner_clicks_are_recorded_but_flagged(tracking: Tracking) -> None:
    url = f"{tracking.base}/r/{TOKEN}"
    # Right after delivery, even a browser's agent: people do not click that fast, gateways do.
    first = await tracking.http.get(url, allow_redirects=False, headers={"User-Agent": FIREFOX})
    delivered_an_hour_ago(tracking)
    head = await tracking.http.head(url, allow_redirects=False, headers={"User-Agent": FIREFOX})
    agent = await tracking.http.get(
        url, allow_redirects=False, headers={"User-Agent": "Mozilla/5.0 (compatible; Proofpoint URL Defense)"}
    )
    person = await tracking.http.get(url, allow_redirects=False, headers={"User-Agent": FIREFOX})
    assert [r.status for r in (first, head, agent, person)] == [307] * 4
    clicks = tracking.store.transaction(lambda s: list(s.scalars(select(Click).order_by(Click.id))))
    assert [(c.method, c.scanner, c.scanner_reason) for c in clicks] == [
        ("GET", True, "too_soon"),
        ("HEAD", True, "head"),
        ("GET", True, "agent"),
        ("GET", False, None),
    ]
    assert tracking.metrics.clicks.labels(tenant="acme", kind="scanner")._value.get() == 3
    assert tracking.metrics.clicks.labels(tenant="acme", kind="person")._value.get() == 1


@pytest.mark.parametrize(
    "header",
    [
        {"Sec-Purpose": "prefetch"},  # Fetch metadata: Firefox, Chromium's speculation rules
        {"Sec-Purpose": "prefetch;prerender"},
        {"Purpose": "prefetch"},  # Chromium's <link rel=prefetch>
        {"X-Moz": "prefetch"},  # older Firefox
        {"X-Purpose": "preview"},  # Safari's link preview
    ],
)
async def test_a_browser_prefetch_is_recorded_but_flagged(tracking: Tracking, header: dict[str, str]) -> None:
    # A browser's own agent, long after delivery: only the header says no person asked for the page.
    delivered_an_hour_ago(tracking)
    url = f"{tracking.base}/r/{TOKEN}"
    response = await tracking.http.get(url, allow_redirects=False, headers={"User-Agent": FIREFOX, **header})
    assert response.status == 307
    clicks = tracking.store.transaction(lambda s: list(s.scalars(select(Click))))
    assert [(c.scanner, c.scanner_reason) for c in clicks] == [(True, "prefetch")]
    assert tracking.metrics.clicks.labels(tenant="acme", kind="person")._value.get() == 0


@pytest.mark.parametrize(
    "breakage",
    [
        "ALTER TABLE referral_events RENAME TO gone",  # the token's lookup fails
        "DROP TABLE clicks",  # the click's row fails: it holds the client's address and agent
    ],
)
async def test_a_click_the_store_cannot_record_logs_no_token_address_or_agent(
    tracking: Tracking, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLAlchemy's error text ends in the statement's parameters, and the log got them all.
    delivered_an_hour_ago(tracking)
    tracking.store.transaction(lambda s: s.execute(text(breakage)))
    caplog.set_level(logging.INFO, logger="mailrelay")
    url = f"{tracking.base}/r/{TOKEN}"
    response = await tracking.http.get(url, allow_redirects=False, headers={"User-Agent": FIREFOX})
    assert response.status == 503
    assert tracking.metrics.event_store_errors._value.get() == 1
    assert "recording a click failed" in caplog.text
    for secret in (TOKEN, "127.0.0.1", FIREFOX):
        assert secret not in caplog.text
    assert "[SQL parameters hidden due to hide_parameters=True]" in caplog.text


async def test_a_registration_the_store_cannot_record_logs_no_token(
    tracking: Tracking, caplog: pytest.LogCaptureFixture
) -> None:
    tracking.store.transaction(lambda s: s.execute(text("ALTER TABLE referral_events RENAME TO gone")))
    caplog.set_level(logging.INFO, logger="mailrelay")
    response = await tracking.webhook(registration(), msg_id="msg_the_senders_own_id")
    assert response.status == 503
    assert "recording a registration failed" in caplog.text
    assert TOKEN not in caplog.text and "msg_the_senders_own_id" not in caplog.text


async def test_a_signed_registration_is_recorded_once(tracking: Tracking) -> None:
    response = await tracking.webhook(registration())
    assert response.status == 200 and (await response.json())["status"] == "recorded"
    # The service retries the same delivery, then sends the same registration under a new id.
    again = await tracking.webhook(registration())
    other_id = await tracking.webhook(registration(), msg_id="msg_2")
    assert [(await r.json())["status"] for r in (again, other_id)] == ["duplicate", "duplicate"]
    assert tracking.count(Registration) == 1
    assert tracking.metrics.registrations.labels(tenant="acme")._value.get() == 1


async def test_rotated_secrets_and_several_signatures_are_accepted(tracking: Tracking) -> None:
    # Signed with the old secret, still configured during the rotation.
    assert (await tracking.webhook(registration(), secret=OLD_SECRET)).status == 200
    stamp = int(time.time())
    body = registration()
    bogus = "v1," + base64.b64encode(b"x" * 32).decode()
    header = f"{bogus} v1a,AAAA {sign(NEW_SECRET, 'msg_9', stamp, body)}"
    response = await tracking.webhook(body, msg_id="msg_9", stamp=stamp, signature=header)
    assert response.status == 200 and (await response.json())["status"] == "duplicate"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body: {"body": body.replace(TOKEN.encode(), b"AbCdEfGhIjKlMnOpQrStUw")},  # body changed
        lambda body: {"secret": "whsec_" + base64.b64encode(b"z" * 32).decode()},  # not our secret
        lambda body: {"stamp": int(time.time()) - 3600},  # a replay from an hour ago
        lambda body: {"stamp": int(time.time()) + 3600},
        lambda body: {"signature": "v1,"},
        lambda body: {"signature": "v2," + sign(NEW_SECRET, "msg_1", int(time.time()), body)[3:]},
    ],
)
async def test_a_bad_signature_gets_401_and_changes_nothing(
    tracking: Tracking, tamper: Callable[[bytes], dict[str, object]]
) -> None:
    body = registration()
    change = tamper(body)
    if "body" in change:
        ts = int(time.time())
        signature = sign(NEW_SECRET, "msg_1", ts, body)
        response = await tracking.webhook(change["body"], stamp=ts, signature=signature)  # type: ignore[arg-type]
    else:
        response = await tracking.webhook(body, **change)  # type: ignore[arg-type]
    assert response.status == 401
    assert tracking.count(Registration) == 0
    assert tracking.metrics.tracking_refused.labels(reason="bad_signature")._value.get() == 1


async def test_a_webhook_with_no_secret_configured_gets_503_and_is_counted(tracking: Tracking) -> None:
    # The sender retries a 503 with backoff; without the count, only its side saw that nothing arrived.
    http = dataclasses.replace(tracking.settings.http, webhook_secrets=())
    unconfigured = dataclasses.replace(tracking.settings, http=http)
    runner = web.AppRunner(build_app(lambda: unconfigured, tracking.store, tracking.metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        signed = sign(NEW_SECRET, "msg_1", int(time.time()), registration())
        response = await tracking.http.post(
            f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
            data=registration(),
            headers={
                "webhook-id": "msg_1",
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": signed,
            },
        )
    finally:
        await runner.cleanup()
    assert response.status == 503
    assert await response.json() == {"error": "webhook not configured"}
    assert tracking.metrics.tracking_refused.labels(reason="not_configured")._value.get() == 1
    assert tracking.count(Registration) == 0


async def test_missing_headers_unknown_tokens_and_bad_payloads(tracking: Tracking) -> None:
    plain = await tracking.http.post(tracking.base + WEBHOOK_PATH, data=registration())
    assert plain.status == 401
    unknown = await tracking.webhook(registration("ZZZZZZZZZZZZZZZZZZZZZZ"), msg_id="msg_u")
    assert unknown.status == 404
    bad = await tracking.webhook(b'{"type": "registration.created"}', msg_id="msg_b")
    assert bad.status == 400
    assert tracking.count(Registration) == 0


async def test_a_body_over_the_limit_gets_413_and_is_counted(tracking: Tracking) -> None:
    body = registration()
    body += b" " * (MAX_WEBHOOK_BODY + 1 - len(body))  # still valid JSON, signed: only the size is wrong
    response = await tracking.webhook(body)
    assert response.status == 413
    assert await response.json() == {"error": f"body larger than {MAX_WEBHOOK_BODY} bytes"}
    assert tracking.metrics.tracking_refused.labels(reason="too_large")._value.get() == 1
    assert tracking.count(Registration) == 0
    at_limit = registration()
    at_limit += b" " * (MAX_WEBHOOK_BODY - len(at_limit))
    assert (await tracking.webhook(at_limit, msg_id="msg_2")).status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"data": ' * 2000 + b"1" + b"}" * 2000,
        b"\xff\xfe",
        b"[]",
        b'{"data": []}',
    ],
)
async def test_a_body_of_the_wrong_shape_gets_400(tracking: Tracking, body: bytes) -> None:
    # Nesting deeper than the interpreter's recursion limit raised RecursionError: a 500.
    response = await tracking.webhook(body)
    assert response.status == 400
    assert tracking.metrics.tracking_refused.labels(reason="malformed")._value.get() == 1


@pytest.mark.parametrize("token", ["AbCdEfGhIjKl\x00nOpQrStUv", "AbCdEfGh IjKlMnOpQrStUv", "short"])
async def test_a_token_the_relay_cannot_have_minted_gets_404(tracking: Tracking, token: str) -> None:
    # PostgreSQL refuses a NUL in a string: that was a 503 (retry!) and an event-store error for bad input.
    response = await tracking.webhook(registration(token))
    assert response.status == 404
    assert tracking.metrics.tracking_refused.labels(reason="unknown_token")._value.get() == 1
    assert tracking.metrics.event_store_errors._value.get() == 0


async def raw_request(t: Tracking, request: bytes) -> bytes:
    """One request written byte for byte, for what aiohttp's client refuses to send."""
    host, port = t.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_webhook_id_that_is_not_utf8_gets_401(tracking: Tracking) -> None:
    # aiohttp hands such a header over with surrogate escapes, which the signed string cannot encode.
    body, stamp = registration(), int(time.time())
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: go.acme.example\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\nwebhook-timestamp: {stamp}\r\n"
        f"webhook-signature: {sign(NEW_SECRET, 'msg_1', stamp, body)}\r\n"
    ).encode()
    answer = await raw_request(tracking, head + b"webhook-id: msg_\xff\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert tracking.count(Registration) == 0
    assert tracking.metrics.tracking_refused.labels(reason="bad_signature")._value.get() == 1


def test_verify_is_the_standard_webhooks_scheme() -> None:
    # The example of the Standard Webhooks spec (standard-webhooks/spec/standard-webhooks.md).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": signature,
    }
    assert verify([secret], headers, body, now=1614265330, tolerance=300) == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    with pytest.raises(WebhookError):
        verify([secret], headers, body, now=1614265330 + 301, tolerance=300)


def test_link_modes(make_settings: SettingsFactory) -> None:
    settings = dataclasses.replace(make_settings(), http=HttpSettings(public_url="https://go.acme.example"))
    tenant = settings.tenants[0]
    assert link_for(settings, tenant, TOKEN) == f"https://careerrelay.jp/r/{TOKEN}"
    click = dataclasses.replace(tenant, link_mode="click")
    assert link_for(settings, click, TOKEN) == f"https://go.acme.example/r/{TOKEN}"
