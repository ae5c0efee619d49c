"""Command-line verbs on the store: `db upgrade`, `ledger` (show, redeem, correct), `purge`, `report`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from mailrelay.config import Settings, TenantSettings
from mailrelay.store import ledger, schema
from mailrelay.store.events import EventStore
from mailrelay.store.models import LedgerEntry
from mailrelay.store.purge import purge

AddConfig = Callable[[argparse.ArgumentParser], None]
LoadSettings = Callable[[argparse.Namespace], Settings]

EXIT_REFUSED = 1
EXIT_USAGE = 2  # as argparse exits for a bad argument


def _store(settings: Settings) -> EventStore:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = EventStore(settings.database_url, dedupe_window=timedelta(days=settings.referral.dedupe_days))
    store.check_schema()
    return store


def _tenant(settings: Settings, tenant_id: str) -> TenantSettings:
    for tenant in settings.tenants:
        if tenant.id == tenant_id:
            return tenant
    known = ", ".join(t.id for t in settings.tenants)
    raise SystemExit(f"mailrelay: no tenant {tenant_id!r} in {settings.source} (tenants: {known})")


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = EventStore(settings.database_url)
    try:
        before = schema.current_revision(store.engine)
        if before is not None and before not in schema.known_revisions():
            print(f"mailrelay: database schema {before} is newer than this mailrelay", file=sys.stderr)
            return EXIT_REFUSED
        schema.upgrade(store.engine)
        print(f"database schema: {before or 'empty'} → {schema.head()}")
    finally:
        store.close()
    return 0


def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    store = EventStore(settings.database_url)
    try:
        print(f"database schema: {schema.current_revision(store.engine) or 'empty'} (latest {schema.head()})")
    finally:
        store.close()
    return 0


def _line_dict(line: ledger.LedgerLine) -> dict[str, object]:
    return {
        "id": line.entry_id,
        "time": line.created_at.isoformat(),
        "kind": line.kind,
        "referrals": line.referrals,
        "slots_used": line.slots_used,
        "slots_adjusted": line.slots_adjusted,
        "referral_event": line.referral_event_id,
        "by": line.actor,
        "reason": line.reason,
        "total_referrals": line.total_referrals,
        "total_earned": line.total_earned,
        "total_used": line.total_used,
        "balance": line.balance,
    }


def cmd_ledger_show(args: argparse.Namespace, settings: Settings) -> int:
    tenant = _tenant(settings, args.tenant)
    store = _store(settings)
    try:
        lines = store.read(lambda s: ledger.lines(s, tenant.id, tenant.referral_ratio))
    finally:
        store.close()
    if args.json:
        print(json.dumps([_line_dict(x) for x in lines], ensure_ascii=False, indent=2))
        return 0
    print(f"ledger of {tenant.name} ({tenant.id}): {tenant.referral_ratio} referrals earn 1 slot")
    print(
        f"{'#':>6}  {'time (UTC)':<16}  {'kind':<10}  {'ref':>4}  {'used':>4}  {'adj':>4}  "
        f"{'referrals':>9}  {'earned':>6}  {'used':>4}  {'balance':>7}  detail"
    )
    for x in lines:
        detail = f"event {x.referral_event_id}" if x.referral_event_id else f"by {x.actor}: {x.reason}"
        print(
            f"{x.entry_id:>6}  {x.created_at.astimezone(UTC):%Y-%m-%d %H:%M}  {x.kind:<10}  "
            f"{x.referrals:>+4}  "
            f"{x.slots_used:>+4}  {x.slots_adjusted:>+4}  {x.total_referrals:>9}  {x.total_earned:>6}  "
            f"{x.total_used:>4}  {x.balance:>7}  {detail}"
        )
    last = lines[-1] if lines else None
    print(
        f"balance: {last.balance if last else 0} slot(s) left "
        f"({last.total_referrals if last else 0} referrals, {last.total_earned if last else 0} earned, "
        f"{last.total_used if last else 0} used)"
    )
    return 0


def _append_line(
    settings: Settings,
    tenant: TenantSettings,
    write: Callable[[Session], LedgerEntry],
    done: Callable[[LedgerEntry, int], str],
) -> int:
    """Append one ledger line, then print `done(line, slots left after it)`; a refusal is printed as such."""
    store = _store(settings)
    try:
        entry = store.transaction(write)
        left = store.read(lambda s: ledger.balance(s, tenant.id, tenant.referral_ratio).left)
    except ledger.LedgerError as exc:
        print(f"mailrelay: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        store.close()
    print(done(entry, left))
    return 0


def cmd_ledger_redeem(args: argparse.Namespace, settings: Settings) -> int:
    tenant = _tenant(settings, args.tenant)
    now = datetime.now(UTC)
    return _append_line(
        settings,
        tenant,
        lambda s: ledger.redeem(s, tenant.id, tenant.referral_ratio, args.by, args.reason, now),
        lambda entry, left: (
            f"ledger line {entry.id}: 1 slot redeemed for {tenant.id} by {args.by}; {left} left"
        ),
    )


def cmd_ledger_correct(args: argparse.Namespace, settings: Settings) -> int:
    tenant = _tenant(settings, args.tenant)
    now = datetime.now(UTC)
    return _append_line(
        settings,
        tenant,
        lambda s: ledger.correct(
            s,
            tenant.id,
            referrals=args.referrals,
            slots_adjusted=args.slots,
            slots_used=args.used,
            by=args.by,
            reason=args.reason,
            now=now,
        ),
        lambda entry, left: (
            f"ledger line {entry.id}: correction for {tenant.id} by {args.by}; {left} slot(s) left"
        ),
    )


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    days = args.days if args.days is not None else settings.referral.retention_days
    if days <= 0:
        print("referral.retention_days is 0: nothing is purged")
        return 0
    if days < settings.referral.dedupe_days:
        print(
            f"mailrelay: --days must be at least referral.dedupe_days ({settings.referral.dedupe_days})",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    now = datetime.now(UTC)
    store = _store(settings)
    try:
        result = store.transaction(lambda s: purge(s, now - timedelta(days=days), now))
    finally:
        store.close()
    print(
        f"purged details older than {days} days: {result.events} referral events, {result.clicks} clicks, "
        f"{result.delivered_marks} delivered marks, {result.applicants} applicant hashes, "
        f"{result.rejections} rejection fingerprints; ledger totals unchanged"
    )
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from mailrelay.reports import build_report, render

    if args.start is not None and args.end is not None and args.start > args.end:
        print(f"mailrelay report: --from {args.start} is after --to {args.end}", file=sys.stderr)
        return EXIT_USAGE
    if args.tenant is not None:
        _tenant(settings, args.tenant)
    tenants = {t.id: (t.name, t.referral_ratio) for t in settings.tenants}
    store = _store(settings)
    try:
        reports = store.read(
            lambda s: build_report(s, tenants, only=args.tenant, start=args.start, end=args.end)
        )
    finally:
        store.close()
    text = render(reports, args.format)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"mailrelay: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return EXIT_REFUSED
    else:
        sys.stdout.write(text)
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, not {text!r}") from exc


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (the CLI's --workers, purge's --days)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: AddConfig, load: LoadSettings
) -> None:
    """Add the store's verbs to the `mailrelay` parser (cli.py calls this once)."""

    def bind(fn: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: fn(args, load(args))

    p = sub.add_parser("db", help="the database schema (Alembic migrations)")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    d = db_sub.add_parser("upgrade", help="bring the schema to this version (refuses a newer one)")
    add_config(d)
    d.set_defaults(func=bind(cmd_db_upgrade))
    d = db_sub.add_parser("current", help="print the schema revision of the database")
    add_config(d)
    d.set_defaults(func=bind(cmd_db_current))

    p = sub.add_parser("ledger", help="the referral ledger of a company: lines, redemptions, corrections")
    add_config(p)
    p.add_argument("--tenant", required=False, metavar="T")
    p.add_argument("--json", action="store_true", help="the lines as JSON")
    p.set_defaults(func=lambda args: _show_or_fail(args, bind(cmd_ledger_show)))
    ledger_sub = p.add_subparsers(dest="ledger_command")
    r = ledger_sub.add_parser("redeem", help="record one free slot used by the company")
    add_config(r)
    r.add_argument("--tenant", required=True, metavar="T")
    r.add_argument("--by", required=True, metavar="NAME", help="who redeemed it")
    r.add_argument("--reason", required=True, metavar="TEXT", help="what for (placement, invoice number…)")
    r.set_defaults(func=bind(cmd_ledger_redeem))
    c = ledger_sub.add_parser("correct", help="append a correction line (the ledger is never edited)")
    add_config(c)
    c.add_argument("--tenant", required=True, metavar="T")
    c.add_argument(
        "--referrals", type=int, default=0, metavar="N", help="referrals to add (negative: remove)"
    )
    c.add_argument("--slots", type=int, default=0, metavar="N", help="slots to grant (negative: withdraw)")
    c.add_argument("--used", type=int, default=0, metavar="N", help="used slots (-1 undoes a redemption)")
    c.add_argument("--by", required=True, metavar="NAME")
    c.add_argument("--reason", required=True, metavar="TEXT")
    c.set_defaults(func=bind(cmd_ledger_correct))

    p = sub.add_parser("purge", help="apply referral.retention_days: pseudonymise old event details")
    add_config(p)
    p.add_argument(
        # 0 or less would purge everything, or (as retention_days = 0 means) nothing: neither was asked for.
        "--days",
        type=positive_int,
        default=None,
        metavar="N",
        help="override referral.retention_days (N >= 1)",
    )
    p.set_defaults(func=bind(cmd_purge))

    p = sub.add_parser("report", help="referrals, slots, clicks and registrations per company and month")
    add_config(p)
    p.add_argument("--tenant", default=None, metavar="T")
    p.add_argument("--from", dest="start", type=_day, default=None, metavar="DATE")
    p.add_argument("--to", dest="end", type=_day, default=None, metavar="DATE")
    p.add_argument("--format", choices=("table", "json", "csv", "html"), default="table")
    p.add_argument("--output", "-o", default=None, metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=bind(cmd_report))


def _show_or_fail(args: argparse.Namespace, show: Callable[[argparse.Namespace], int]) -> int:
    if args.tenant is None:
        print(
            "mailrelay ledger: --tenant T is required (or: ledger redeem / ledger correct)", file=sys.stderr
        )
        return EXIT_USAGE
    return show(args)
