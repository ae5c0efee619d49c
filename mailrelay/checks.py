"""What `mailrelay check-config` verifies: config, rules, keys, templates, then database and next hop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from mailrelay.app import load_ruleset
from mailrelay.config import Settings, load_settings
from mailrelay.errors import ConfigError
from mailrelay.signing import DkimSigner
from mailrelay.stages import StageContext, build_pipeline
from mailrelay.transport import NextHopUnavailable, SmtpNextHop

Status = Literal["ok", "config-error", "unreachable"]

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_CONFIG = 2


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        word = {"ok": "ok", "config-error": "FAILED", "unreachable": "UNREACHABLE"}[self.status]
        return f"{self.name + ':':<10} {word:<11} {self.detail}"


def check_database(url: str) -> Check:
    """Connect and SELECT 1; a SQLite file that does not exist yet only needs a writable directory."""
    shown = make_url(url).render_as_string(hide_password=True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.exists():
            return _writable("database", path.parent, f"{shown} (made on first start)")
    engine = create_engine(url, hide_parameters=True)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        # The driver's message names the host and the reason, never the password of the URL.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return Check("database", "unreachable", f"{shown}: {reason}")
    finally:
        engine.dispose()
    return Check("database", "ok", shown)


def _writable(name: str, directory: Path, shown: str) -> Check:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return Check(name, "unreachable", f"{shown}: {existing} is not a writable directory")
    return Check(name, "ok", shown)


async def _smtp_reachable(settings: Settings) -> Check:
    nh = settings.next_hop
    where = f"smtp://{nh.host}:{nh.port} (starttls {nh.starttls})"
    try:
        connection = await SmtpNextHop(nh, settings.smtp.hostname).connect()
    except NextHopUnavailable as exc:
        return Check("next_hop", "unreachable", f"{where}: {exc.kind}: {exc.detail}")
    await connection.close()
    return Check("next_hop", "ok", f"{where}: EHLO answered")


def check_next_hop(settings: Settings) -> Check:
    directory = settings.next_hop.directory
    if directory is not None:
        return _writable("next_hop", directory, f"directory {directory}")
    return asyncio.run(_smtp_reachable(settings))


def check_config(path: Path, emit: Callable[[str], None] = print) -> int:
    """One line per check; exit 2 on a config error (checks stop there), 1 if a dependency is unreachable."""
    stage = "config"
    try:
        settings = load_settings(path)
        emit(Check(stage, "ok", str(path)).line())
        stage = "rules"
        rules = load_ruleset(settings)
        files = len(settings.rules)
        emit(Check(stage, "ok", f"{len(rules.ids)} rules from {files} file{'s' * (files != 1)}").line())
        stage = "dkim"
        signer = DkimSigner(settings.tenants, str(settings.source))
        keys = sum(len(k) for k in signer.keys.values())
        emit(Check(stage, "ok", f"{keys} key(s) for {len(settings.tenants)} tenant(s)").line())
        stage = "templates"
        build_pipeline(StageContext(settings, signer))
        footers = sorted({name for tenant in settings.tenants for name in tenant.footers})
        emit(Check(stage, "ok", f"footers {', '.join(footers) or '(none)'}").line())
    except ConfigError as exc:
        emit(Check(stage, "config-error", str(exc)).line())
        return EXIT_CONFIG
    status = EXIT_OK
    for check in (check_database(settings.database_url), check_next_hop(settings)):
        emit(check.line())
        if check.status != "ok":
            status = EXIT_UNREACHABLE
    return status
