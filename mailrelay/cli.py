"""The command line: serve, check, preview, dkim keygen; config errors exit 2 (`file › key: problem`)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from mailrelay import __version__
from mailrelay.config import Settings, default_config_path, load_settings
from mailrelay.detection import Verdict
from mailrelay.errors import ConfigError
from mailrelay.message import MimeError, parse
from mailrelay.store.commands import positive_int
from mailrelay.store.schema import SchemaError

EXIT_CONFIG = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config.toml to use (default: the embedded defaults, the shipped config.toml)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config or default_config_path())


def _offline_relay(settings: Settings):  # type: ignore[no-untyped-def]
    """The relay's planning part without listeners or the database: for check and preview."""
    from mailrelay.app import load_ruleset
    from mailrelay.journal import EventJournal
    from mailrelay.metrics import Metrics
    from mailrelay.relay import Relay
    from mailrelay.signing import DkimSigner
    from mailrelay.stages import StageContext, build_pipeline
    from mailrelay.store import EventStore
    from mailrelay.transport import DirectoryNextHop

    rules = load_ruleset(settings)
    signer = DkimSigner(settings.tenants, str(settings.source))
    pipeline = build_pipeline(StageContext(settings, signer))
    return Relay(
        settings,
        rules,
        pipeline,
        EventStore("sqlite://"),
        DirectoryNextHop(settings.state_dir / "outbox"),
        Metrics(),
        secrets.token_bytes(32),
        EventJournal(settings.state_dir / "preview.journal"),
    )


def _dkim_domain(text: str) -> str:
    from mailrelay.signing import is_domain

    domain = text.removesuffix(".")  # the root's dot, as zone files write names
    if not is_domain(domain):
        raise argparse.ArgumentTypeError(
            "must be a domain name such as example.co.jp (labels of letters, digits and hyphens, "
            f"an IDN in its xn-- form), not {text!r}"
        )
    return domain


def _dkim_selector(text: str) -> str:
    from mailrelay.signing import is_selector

    if not is_selector(text):
        raise argparse.ArgumentTypeError(
            "must be a selector such as mr2027 (labels of letters, digits and hyphens, RFC 6376 §3.1), "
            f"not {text!r}"
        )
    return text


def cmd_serve(args: argparse.Namespace) -> int:
    from mailrelay.allocator import limit_malloc_arenas
    from mailrelay.app import event_loop_factory, run_on_loop, serve, serve_workers, setup_logging

    limit_malloc_arenas()  # before any thread: the store's, the loop's, the workers' (issue 8 soak)
    settings = _settings(args)
    setup_logging(args.log_level or settings.log_level, settings.log_format)
    event_loop_factory(args.loop)  # an unusable choice fails here, before any worker starts
    if args.workers > 1:
        return serve_workers(settings, args.workers, args.log_level, args.loop)
    return run_on_loop(serve(settings), args.loop)


def _verdict_for(relay, raw: bytes) -> tuple[Verdict | None, str]:  # type: ignore[no-untyped-def]
    try:
        parsed = parse(raw, relay.limits)
    except MimeError as exc:
        return None, f"not parsed ({exc.reason}): would be forwarded unmodified"
    tenant, _from_domain = relay.tenant_for(parsed, "")
    sender = next(iter(parsed.header_values("From")), "")
    verdict: Verdict = relay.detect(
        parsed, parsed.text(), sender, tenant.id if tenant else None, explain=True
    )
    note = "" if tenant else "no tenant owns the From domain: would be forwarded unmodified"
    if parsed.protected:
        note = f"{parsed.protected} message: would be forwarded unmodified"
    return verdict, note


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    relay = _offline_relay(settings)
    status = 0
    for file in args.eml:
        try:
            raw = Path(file).read_bytes()
        except OSError as exc:
            print(f"{file}: cannot read: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        verdict, note = _verdict_for(relay, raw)
        if args.json:
            print(
                json.dumps(
                    {
                        "file": file,
                        "rejection": bool(verdict and verdict.rejection),
                        "rule": verdict.rule if verdict else None,
                        "footer": verdict.footer if verdict else None,
                        "fired": list(verdict.fired) if verdict else [],
                        "vetoed": [list(v) for v in verdict.vetoed] if verdict else [],
                        "shadow": list(verdict.shadow) if verdict else [],
                        "note": note or None,
                    },
                    ensure_ascii=False,
                )
            )
            continue
        if verdict is None:
            print(f"{file}: {note}")
            continue
        summary = f"rejection (rule {verdict.rule})" if verdict.rejection else "not a rejection"
        print(f"{file}: {summary}" + (f"; {note}" if note else ""))
        if args.explain:
            for line in verdict.details:
                print(f"  {line}")
    return status


def cmd_preview(args: argparse.Namespace) -> int:
    from mailrelay.relay import Transaction

    settings = _settings(args)
    relay = _offline_relay(settings)
    try:
        raw = Path(args.eml).read_bytes()
    except OSError as exc:
        print(f"{args.eml}: cannot read: {exc.strerror}", file=sys.stderr)  # as `check` says it
        return 1
    sender = args.sender
    if sender is None:
        try:
            from mailrelay.relay import first_address

            # As the relay reads it: the address parsed before any RFC 2047 decoding.
            sender = first_address(parse(raw, relay.limits).address_header_values("From"))
        except MimeError:
            sender = ""
    txn = Transaction("PREVIEW", sender, [], [args.rcpt], raw)
    plan = relay.plan(txn, lambda _reason: None)
    group = next(g for g in plan.groups if args.rcpt in g.recipients)
    print(f"mailrelay preview: {plan.decision}", file=sys.stderr)
    sys.stdout.buffer.write(group.content)
    sys.stdout.buffer.flush()
    return 0


def _new_key(key_file: Path, algorithm: str) -> str | None:
    """make_key_pair's TXT record, or None after one line on stderr: the key exists (a key that may be
    published is never overwritten), or cannot be written (a directory of root's, a file in the way)."""
    from mailrelay.signing import make_key_pair

    try:
        # Inside the try: exists() too raises PermissionError, in a directory the user cannot search.
        if key_file.exists():
            print(f"{key_file} exists: refusing to overwrite a key", file=sys.stderr)
            return None
        return make_key_pair(key_file, algorithm)
    except OSError as exc:
        _cannot_write(exc, key_file)
        return None


def _cannot_write(exc: OSError, path: Path) -> None:
    print(f"mailrelay: cannot write {exc.filename or path}: {exc.strerror}", file=sys.stderr)


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from mailrelay.signing import dns_record

    algorithm = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[args.algorithm]
    out = Path(args.out)
    key_file = out / f"{args.selector}.{args.domain}.{args.algorithm}.key"
    txt = _new_key(key_file, algorithm)
    if txt is None:
        return 1
    record = dns_record(args.selector, args.domain, txt)
    record_file = out / f"{args.selector}.{args.domain}.{args.algorithm}.txt"
    try:
        record_file.write_text(record + "\n")
    except OSError as exc:
        _cannot_write(exc, record_file)
        return 1
    print(f"; private key: {key_file} (mode 600)\n; publish this record, then set key_file in config.toml:")
    print(record)
    return 0


def cmd_version(_args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for dist in ("aiosmtpd", "aiosmtplib", "dkimpy", "SQLAlchemy", "prometheus-client"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    print(f"mailrelay {__version__} ({', '.join(parts)})")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from mailrelay.checks import check_config

    return check_config(args.config or default_config_path())


def cmd_dkim_dns(args: argparse.Namespace) -> int:
    from mailrelay import signing

    settings = _settings(args)
    status = 0
    for i, tenant in enumerate(settings.tenants):
        print(f"; tenant {tenant.id} ({tenant.name}): one record per signing domain and key")
        for j, key in enumerate(tenant.dkim):
            # What the relay would load, with its checks (mode, readable, matches its algorithm).
            txt = signing.public_txt(signing.read_key(key, str(settings.source), signing.key_where(i, j)))
            for domain in tenant.domains:
                print(signing.dns_record(key.selector, domain, txt))
                if args.verify:
                    state = signing.verify_published(key.selector, domain, txt)
                    print(f";   published: {VERIFY_WORDS[state]}")
                    status = status or (1 if state in ("missing", "differs") else 0)
    return status


VERIFY_WORDS = {
    "matches": "yes, the record in DNS matches this key",
    "differs": "NO: the record in DNS holds another key (signatures would fail)",
    "missing": "NO: no record in DNS (signatures would fail)",
    "unreachable": "unknown: DNS could not be asked from here",
}


def cmd_dkim_rotate(args: argparse.Namespace) -> int:
    from mailrelay import signing

    settings = _settings(args)
    tenant = next((t for t in settings.tenants if t.id == args.tenant), None)
    if tenant is None:
        print(f"no tenant {args.tenant!r} in {settings.source}", file=sys.stderr)
        return 1
    if any(k.selector == args.selector for k in tenant.dkim):
        print(
            f"tenant {tenant.id} already signs with selector {args.selector!r}: pick a new one",
            file=sys.stderr,
        )
        return 1
    algorithm = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[args.algorithm]
    key_file = settings.state_dir / "dkim" / f"{tenant.id}.{args.selector}.{args.algorithm}.key"
    txt = _new_key(key_file, algorithm)
    if txt is None:
        return 1
    print(f"; new {algorithm} key for tenant {tenant.id}: {key_file} (mode 600)")
    print("; 1. publish these records:")
    for domain in tenant.domains:
        print(signing.dns_record(args.selector, domain, txt))
    print("; 2. wait until `mailrelay dkim dns --verify` says they match and the old TTL has passed;")
    print(f'; 3. in {settings.source}, under the [[tenants]] with id = "{tenant.id}", add')
    print(f';      [[tenants.dkim]]\n;      selector = "{args.selector}"\n;      key_file = "{key_file}"')
    print(f';      algorithm = "{algorithm}"')
    print(";    and remove the old [[tenants.dkim]] (keep both for a while to dual-sign);")
    print("; 4. reload: systemctl reload mailrelay (SIGHUP reloads keys);")
    print("; 5. keep the old DNS record for a week, so mail still in transit verifies; then delete it.")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    import getpass

    from mailrelay.smtp.auth import hash_password

    if ":" in args.user or not args.user.strip():
        print("a user name must not be empty or contain ':'", file=sys.stderr)
        return 1
    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("password: ")
    if len(password) < 12:
        print("a password needs at least 12 characters", file=sys.stderr)
        return 1
    print(f"{args.user}:{hash_password(password)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailrelay", description="SMTP relay that turns rejection mail into referrals"
    )
    parser.add_argument("--version", action="version", version=f"mailrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the relay")
    _add_config(p)
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None)
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="processes sharing the SMTP port, one per core, each taking new sessions while it serves no "
        "more than the others; worker i serves metrics on metrics port + i (default: 1)",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or asyncio's own",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="the verdict of the rules for each message file")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--explain", action="store_true", help="the rule and the phrases that fired, or the veto")
    p.add_argument("eml", nargs="+", metavar="EML")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("preview", help="write the exact bytes that would be forwarded to one recipient")
    _add_config(p)
    p.add_argument("--rcpt", required=True, metavar="ADDR")
    p.add_argument(
        "--sender", default=None, metavar="ADDR", help="envelope sender (default: the From address)"
    )
    p.add_argument("eml", metavar="EML")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("passwd", help="print a smtp.auth_users_file line for USER (password from stdin)")
    p.add_argument("user", metavar="USER")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("dkim", help="DKIM keys")
    dkim_sub = p.add_subparsers(dest="dkim_command", required=True)
    k = dkim_sub.add_parser("keygen", help="make a key pair and print the DNS TXT record to publish")
    k.add_argument("--domain", required=True, type=_dkim_domain)
    k.add_argument("--selector", required=True, type=_dkim_selector)
    k.add_argument("--out", required=True, metavar="DIR")
    k.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    k.set_defaults(func=cmd_dkim_keygen)
    k = dkim_sub.add_parser("dns", help="print the DNS TXT record of every tenant key for each tenant domain")
    _add_config(k)
    k.add_argument(
        "--verify", action="store_true", help="also check each record in DNS (exit 1 if one is wrong)"
    )
    k.set_defaults(func=cmd_dkim_dns)
    k = dkim_sub.add_parser("rotate", help="make a tenant's next key and print the records and the steps")
    _add_config(k)
    k.add_argument("--tenant", required=True)
    k.add_argument("--selector", required=True, type=_dkim_selector, help="the new selector, e.g. mr2027")
    k.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    k.set_defaults(func=cmd_dkim_rotate)

    p = sub.add_parser("version", help="the versions of mailrelay, Python and the libraries it runs on")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser(
        "check-config",
        help="check config, rules, templates and keys (exit 2), then database and next hop (exit 1)",
    )
    _add_config(p)
    p.set_defaults(func=cmd_check_config)

    from mailrelay.store.commands import register as register_store_commands

    # db upgrade, ledger (show, redeem, correct), purge, report (issue 6).
    register_store_commands(sub, _add_config, _settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"mailrelay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SchemaError as exc:
        print(f"mailrelay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return result


if __name__ == "__main__":
    sys.exit(main())
