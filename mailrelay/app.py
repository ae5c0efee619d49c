"""Composition root: builds every object from Settings, starts and stops them in order, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailrelay import sdnotify
from mailrelay.allocator import arena_cap, limit_malloc_arenas
from mailrelay.config import Listen, Settings, expand_rule_globs, load_settings
from mailrelay.detection import RuleSet, load_rules
from mailrelay.errors import ConfigError
from mailrelay.journal import EventJournal, replay_forever
from mailrelay.metrics import Metrics
from mailrelay.relay import Relay
from mailrelay.signing import DkimSigner
from mailrelay.smtp.balance import BalancedListener, SessionCounts, SharedListen, bind
from mailrelay.smtp.server import LISTEN_BACKLOG, RelayHandler, start_shared_smtp_server, start_smtp_server
from mailrelay.stages import StageContext, build_pipeline
from mailrelay.store import EventStore
from mailrelay.tracking.http import start_tracking_server
from mailrelay.transport import DirectoryNextHop, NextHop, SmtpNextHop

log = logging.getLogger("mailrelay")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows where a record was logged from, or in which thread or process: do not look it
    # up for every record (the logging HOWTO's "Optimization"; a stack walk per line, issue 8 profile).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every envelope address at INFO on "mail.log"; applicant addresses stay out of logs.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def settle_heap() -> None:
    """Collect once, then freeze what survives (gc.freeze): configuration, rules, keys, pools and modules
    live as long as the process, and full collections stop walking them. A worker starts with ~110,000
    objects; a full collection of them took 20-36 ms under load, a pause of every session of that worker
    (issue 8, closed-loop p99). Frozen, a full collection walks only what messages allocated."""
    gc.collect()
    gc.freeze()


def load_ruleset(settings: Settings) -> RuleSet:
    # Per tenant, not their union: a rule must name tenants that exist, and every tenant it applies to must
    # have its footer (tenant.footers: the shared [footers] with the tenant's own on top).
    tenants = {tenant.id: tuple(tenant.footers) for tenant in settings.tenants}
    try:
        paths = expand_rule_globs(settings.rule_globs)
    except ValueError as exc:
        raise ConfigError(str(settings.source), ("rules.paths",), str(exc)) from exc
    return load_rules(paths, tenants)


def load_hash_key(path: Path) -> bytes:
    """The secret of the keyed recipient hash; made once, then kept (a new key would break dedupe)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


@dataclass
class Components:
    settings: Settings
    metrics: Metrics
    relay: Relay
    store: EventStore
    handler: RelayHandler
    signer: DkimSigner


def build(settings: Settings, metrics: Metrics | None = None, next_hop: NextHop | None = None) -> Components:
    """Every long-lived object, built once from Settings; raises ConfigError before anything listens."""
    metrics = metrics or Metrics()
    rules = load_ruleset(settings)
    signer = DkimSigner(settings.tenants, str(settings.source))
    pipeline = build_pipeline(StageContext(settings, signer))
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = EventStore(settings.database_url, dedupe_window=timedelta(days=settings.referral.dedupe_days))
    # Empty database: created; newer schema: SchemaError, the relay does not start (issue 6).
    log.info("database: %s", store.check_schema())
    if next_hop is None:
        nh = settings.next_hop
        next_hop = DirectoryNextHop(nh.directory) if nh.directory else SmtpNextHop(nh, settings.smtp.hostname)
    journal = EventJournal(settings.state_dir / "events.journal")
    metrics.journal_backlog.set_function(lambda: journal.backlog)
    hash_key = load_hash_key(settings.referral.hash_key_file)
    relay = Relay(settings, rules, pipeline, store, next_hop, metrics, hash_key, journal)
    metrics.prime(rules.ids, tuple(t.id for t in settings.tenants))
    handler = RelayHandler(settings, relay, metrics)
    return Components(settings, metrics, relay, store, handler, signer)


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    async def serve_metrics(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start_tracking(components: Components, *, reuse_port: bool = False) -> web.AppRunner | None:
    """The click redirect and the registration webhook, when http.listen is set. They read
    components.settings on each request, so what a reload brings (webhook secrets, tolerance, the referral
    URL) applies to the next request; only the listen address takes a restart (RESTART_ONLY)."""
    listen = components.settings.http.listen
    if listen is None:
        return None
    return await start_tracking_server(
        lambda: components.settings, components.store, components.metrics, listen, reuse_port=reuse_port
    )


# What a reload cannot change: these are bound at start (sockets, connections, the store).
RESTART_ONLY = (
    "smtp.listen",
    "smtp.tls_cert_file",
    "smtp.tls_key_file",
    "smtp.require_starttls",
    "smtp.auth_users_file",
    "metrics_listen",
    "http.listen",
    "database_url",
    "next_hop",
    "state_dir",
)


def reload_rules(components: Components) -> bool:
    """SIGHUP: read config.toml, the rule files, the footer templates and the DKIM keys again, and swap them
    in only if all of them load (a bad file keeps everything as it was, logged and counted). The rule set
    is swapped by one assignment, so a message being planned sees the old rules or the new, never a mix."""
    old = components.settings
    try:
        settings = load_settings(old.source)
        rules = load_ruleset(settings)
        signer = DkimSigner(settings.tenants, str(settings.source))
        pipeline = build_pipeline(StageContext(settings, signer))
    except Exception as exc:
        log.error("reload refused, keeping the old configuration: %s", exc)
        components.metrics.rule_reloads.labels(result="failure").inc()
        return False
    changed = [key for key in RESTART_ONLY if _dotted(settings, key) != _dotted(old, key)]
    if changed:
        log.warning("reload: %s changed; that takes a restart (kept as before)", ", ".join(changed))
        settings = dataclasses.replace(
            settings,
            smtp=dataclasses.replace(
                settings.smtp,
                listen=old.smtp.listen,
                tls_cert_file=old.smtp.tls_cert_file,
                tls_key_file=old.smtp.tls_key_file,
                require_starttls=old.smtp.require_starttls,
                auth_users_file=old.smtp.auth_users_file,
            ),
            metrics_listen=old.metrics_listen,
            http=dataclasses.replace(settings.http, listen=old.http.listen),
            database_url=old.database_url,
            next_hop=old.next_hop,
            state_dir=old.state_dir,
        )
    relay = components.relay
    relay.settings, relay.pipeline, relay.rules = settings, pipeline, rules
    components.handler.settings = settings
    components.settings, components.signer = settings, signer
    components.metrics.prime(rules.ids, tuple(t.id for t in settings.tenants))
    components.metrics.rule_reloads.labels(result="success").inc()
    # The old rules, keys and pipeline were frozen with the rest at start: let a collection see them.
    gc.unfreeze()
    settle_heap()
    log.info("reloaded: %d rules, %d tenants", len(rules.ids), len(settings.tenants))
    return True


def _dotted(settings: Settings, key: str) -> object:
    value: object = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


async def drain(handler: RelayHandler, grace: float) -> None:
    """Stop like an MTA: the listener stays open so new sessions hear `421 4.3.2` instead of a refused
    connection, transactions in flight get `grace` seconds to finish; whatever is cut then never got a
    250, so its sender retries (RFC 5321 §4.2.5)."""
    handler.closing = True
    pending = handler.in_flight()
    if pending:
        log.info("waiting up to %.0f s for %d transaction(s) in flight", grace, len(pending))
        _done, late = await asyncio.wait(pending, timeout=grace)
        if late:
            log.warning("%d transaction(s) cut after %.0f s; their senders retry", len(late), grace)


async def serve(settings: Settings, *, shared: SharedListen | None = None) -> int:
    """One process serving everything; with `shared`, one of the workers of `serve --workers N`."""
    components = build(settings)
    smtp_server: asyncio.Server | BalancedListener
    if shared is not None:
        smtp_server = start_shared_smtp_server(settings, components.handler, components.metrics, shared)
    else:
        # Socket activation (systemd/mailrelay.socket): port 25 without any capability for the daemon.
        passed = sdnotify.passed_smtp_socket()
        smtp_server = await start_smtp_server(settings, components.handler, components.metrics, sock=passed)
    runner = None
    if settings.metrics_listen is not None:
        runner = await start_metrics_server(
            components.metrics, settings.metrics_listen.host, settings.metrics_listen.port
        )
    tracking = await start_tracking(components, reuse_port=shared is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_sighup() -> None:
        sdnotify.reloading()
        reload_rules(components)
        sdnotify.notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    where = settings.next_hop.directory or f"{settings.next_hop.host}:{settings.next_hop.port}"
    smtp_listen = Listen(*smtp_server.sockets[0].getsockname()[:2])
    event_loop = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    status = (
        f"listening on {smtp_listen}, next hop {where}, metrics {settings.metrics_listen or 'off'},"
        f" event loop {event_loop}, malloc arenas {arena_cap()}"
    )
    log.info("%s", status)
    settle_heap()
    # Only now: both listeners accept connections, so `systemctl start` returns when mail can flow.
    sdnotify.notify(f"READY=1\nSTATUS={status}")
    watchdog = sdnotify.start_watchdog()
    replayer = asyncio.ensure_future(
        replay_forever(components.relay.journal, components.store, on_success=components.relay.store_back)
    )
    await stop.wait()
    sdnotify.notify("STOPPING=1\nSTATUS=stopping: finishing transactions in flight")
    log.info("stopping: no new sessions, finishing transactions in flight")
    if watchdog is not None:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    await drain(components.handler, settings.smtp.shutdown_grace)
    replayer.cancel()
    smtp_server.close()
    if runner is not None:
        await runner.cleanup()
    if tracking is not None:
        await tracking.cleanup()
    components.relay.journal.close()  # a replay under way writes to the store: first
    components.store.close()
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `serve --loop` asks for (None: asyncio's own). uvloop (libuv; transports and the
    selector in C) takes ~20 % less CPU per relayed message than asyncio's loop (issue 8 profile); "auto"
    uses it when installed, as uvicorn's --loop auto does."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("mailrelay serve", ["--loop"], "uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_on_loop(main: Coroutine[Any, Any, int], choice: str) -> int:
    with asyncio.Runner(loop_factory=event_loop_factory(choice)) as runner:
        return runner.run(main)


def _worker(config: Path, shared: SharedListen, log_level: str | None, loop: str) -> None:
    """One process of `serve --workers N` (multiprocessing "spawn": a fresh interpreter; it shares only the
    SMTP sockets and the session counts)."""
    index = shared.counts.index
    limit_malloc_arenas()
    settings = load_settings(config)
    setup_logging(log_level or settings.log_level, settings.log_format)
    if settings.metrics_listen is not None and settings.metrics_listen.port != 0:
        # Each worker has its own registry, hence its own port: metrics port + index (scrape N targets).
        listen = settings.metrics_listen
        settings = dataclasses.replace(settings, metrics_listen=Listen(listen.host, listen.port + index))
    sys.exit(run_on_loop(serve(settings, shared=shared), loop))


def serve_workers(settings: Settings, workers: int, log_level: str | None, loop: str = "auto") -> int:
    """N processes share the SMTP port, so the CPU work of N messages runs on N cores (one Python process
    uses one core, issue 8). This parent binds the port (or takes systemd's socket), starts them, forwards
    SIGTERM, SIGINT and SIGHUP (rule reload) to them, and stops them all when one dies, so that the service
    manager restarts the whole set. Each worker takes a new session only while it serves no more than the
    others (smtp/balance.py)."""
    # Built once here first: a broken config fails before any fork, and the demo DKIM key, the hash key and
    # the schema are made by one process instead of N racing ones.
    build(settings).store.close()
    passed = sdnotify.passed_smtp_socket()
    if passed is not None:
        sockets = [passed]
    else:
        sockets = bind(settings.smtp.listen, LISTEN_BACKLOG, str(settings.source))
    context = multiprocessing.get_context("spawn")
    slots = context.RawArray("i", workers)
    children = [
        context.Process(
            target=_worker,
            args=(settings.source, SharedListen(sockets, SessionCounts(slots, i)), log_level, loop),
            name=f"mailrelay-worker-{i}",
            daemon=False,
        )
        for i in range(workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for child in children:
        child.start()
    for sock in sockets:
        sock.close()  # the workers have their own descriptors: the port closes when the last of them exits
    log.info("started %d workers: %s", workers, ", ".join(str(c.pid) for c in children))
    status = 0
    # One look at which workers run, then wait for those: each look at `exitcode` may reap a worker, so a
    # second look could find none running and wait on an empty list for ever, the workers gone and the
    # parent never exiting (seen as `stop` hanging until the service manager's kill; issue 8 bench).
    while running := [c for c in children if c.exitcode is None]:
        multiprocessing.connection.wait([c.sentinel for c in running])
        for child in children:
            if child.exitcode is not None and child.exitcode != 0:
                status = 1
        if not stopping and any(c.exitcode is not None for c in children):
            log.error("a worker exited unexpectedly; stopping the others")
            forward(signal.SIGTERM, None)
    for child in children:
        child.join()
    return status
