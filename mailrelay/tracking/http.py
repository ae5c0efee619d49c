"""The HTTP side of tracking, in the relay's process: GET /r/<token> records a click and redirects to the
referral service; POST /webhooks/registration takes the service's signed registration callback."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from aiohttp import web
from aiohttp.typedefs import Handler

from mailrelay.config import Listen, Settings
from mailrelay.metrics import Metrics
from mailrelay.store import EventStore
from mailrelay.tracking.links import PREFETCH_HEADERS, TOKEN, scanner_reason, service_url
from mailrelay.tracking.webhook import WebhookError, verify

log = logging.getLogger("mailrelay.tracking")

WEBHOOK_PATH = "/webhooks/registration"
MAX_WEBHOOK_BODY = 65536

STORE: web.AppKey[EventStore] = web.AppKey("store", EventStore)
# The settings of the moment, not those the server started with: a reload (SIGHUP, app.reload_rules) swaps
# them, and each request reads them once, so that new webhook secrets apply without a restart (rotation,
# docs/webhook.md). The reload and the handlers run on the same event loop: no lock is needed.
SETTINGS: web.AppKey[Callable[[], Settings]] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _not_found() -> web.Response:
    # Never a redirect for a token we did not issue: the endpoint is no open redirect.
    return web.Response(status=404, text="Not found\n", headers=_NO_STORE)


async def click(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    if not TOKEN.fullmatch(token):
        request.app[METRICS].tracking_refused.labels(reason="unknown_token").inc()
        return _not_found()
    settings = request.app[SETTINGS]()
    agent = request.headers.get("User-Agent")
    purpose = " ".join(request.headers.get(name, "") for name in PREFETCH_HEADERS)
    try:
        result = await request.app[STORE].click(
            token,
            method=request.method,
            ip=request.remote,
            user_agent=agent,
            scanner_reason=scanner_reason(request.method, agent, purpose),
            too_soon=timedelta(seconds=settings.http.scanner_seconds),
        )
    except Exception:
        log.exception("recording a click failed")
        request.app[METRICS].event_store_errors.inc()
        return web.Response(status=503, text="Try again later\n", headers=_NO_STORE)
    if result is None:
        request.app[METRICS].tracking_refused.labels(reason="unknown_token").inc()
        return _not_found()
    request.app[METRICS].clicks.labels(
        tenant=result.tenant_id, kind="scanner" if result.scanner else "person"
    ).inc()
    # 307 like Postal: the target is built from the stored token and the configured service URL only.
    raise web.HTTPTemporaryRedirect(service_url(settings, result.token), headers=_NO_STORE)


async def registration(request: web.Request) -> web.Response:
    settings, metrics = request.app[SETTINGS](), request.app[METRICS]
    if not settings.http.webhook_secrets:
        # Counted: the sender retries a 503, and only its side saw that nothing arrived.
        metrics.tracking_refused.labels(reason="not_configured").inc()
        return web.json_response({"error": "webhook not configured"}, status=503)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        # client_max_size: aiohttp's own 413 was plain text and counted nowhere.
        metrics.tracking_refused.labels(reason="too_large").inc()
        return web.json_response({"error": f"body larger than {MAX_WEBHOOK_BODY} bytes"}, status=413)
    try:
        msg_id = verify(
            settings.http.webhook_secrets,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            now=time.time(),
            tolerance=settings.http.webhook_tolerance,
        )
    except WebhookError as exc:
        metrics.tracking_refused.labels(reason="bad_signature").inc()
        log.warning("registration webhook refused: %s", exc)
        return web.json_response({"error": "invalid signature"}, status=401)
    try:
        payload = json.loads(body)
        token = payload["data"]["token"]
        if payload.get("type", "registration.created") != "registration.created" or not isinstance(
            token, str
        ):
            raise ValueError(payload.get("type"))
    # RecursionError: a body nested deeper than json.loads can go (a 500 before).
    except (ValueError, KeyError, TypeError, RecursionError):
        metrics.tracking_refused.labels(reason="malformed").inc()
        return web.json_response(
            {"error": "expected {type: registration.created, data: {token}}"}, status=400
        )
    if not TOKEN.fullmatch(token):
        # Never issued, as at the click endpoint; and PostgreSQL refuses a NUL in a string, which made a
        # sender's bad token a 503 (retry) and an event-store error.
        metrics.tracking_refused.labels(reason="unknown_token").inc()
        return web.json_response({"error": "unknown token"}, status=404)
    try:
        result = await request.app[STORE].register(token, msg_id)
    except Exception:
        log.exception("recording a registration failed")
        metrics.event_store_errors.inc()
        return web.json_response({"error": "try again later"}, status=503)
    if result.status == "unknown_token":
        metrics.tracking_refused.labels(reason="unknown_token").inc()
        return web.json_response({"error": "unknown token"}, status=404)
    if result.status == "recorded" and result.tenant_id is not None:
        metrics.registrations.labels(tenant=result.tenant_id).inc()
    return web.json_response({"status": result.status}, status=200)


async def _no_server_version(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would send `Server: Python/3.x aiohttp/3.y`: on a public endpoint, a list of advisories to try.
    response.headers["Server"] = "mailrelay"


@web.middleware
async def _count_wrong_methods(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A wrong method on a known path (POST /r/<token>, GET on the webhook) gets its 405 from aiohttp's
    # router, before any handler here: counted here, like every other refusal.
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        request.app[METRICS].tracking_refused.labels(reason="method_not_allowed").inc()
        raise


def build_app(settings: Callable[[], Settings], store: EventStore, metrics: Metrics) -> web.Application:
    """`settings` returns the settings in force now (see SETTINGS)."""
    app = web.Application(client_max_size=MAX_WEBHOOK_BODY, middlewares=[_count_wrong_methods])
    app[SETTINGS] = settings
    app[STORE] = store
    app[METRICS] = metrics
    app.on_response_prepare.append(_no_server_version)
    # HEAD too: scanners send it, and it is flagged. `.*`: an empty token or one with a slash is a malformed
    # token like any other (404, no-store, counted), not a path the router knows nothing of.
    app.router.add_get("/r/{token:.*}", click)
    app.router.add_post(WEBHOOK_PATH, registration)
    return app


async def start_tracking_server(
    settings: Callable[[], Settings],
    store: EventStore,
    metrics: Metrics,
    listen: Listen,
    *,
    reuse_port: bool = False,
) -> web.AppRunner:
    runner = web.AppRunner(build_app(settings, store, metrics), access_log=None)
    await runner.setup()
    # reuse_port: `serve --workers N` shares the one HTTP address like the SMTP one.
    await web.TCPSite(runner, listen.host, listen.port, reuse_port=reuse_port or None).start()
    return runner
