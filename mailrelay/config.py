"""config.toml → one frozen, typed Settings object, validated once; errors name `file › key: problem`."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from mailrelay.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
StartTLS = Literal["off", "opportunistic", "required"]
LogFormat = Literal["text", "json"]
DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]

T = TypeVar("T")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SmtpSettings:
    listen: Listen
    hostname: str
    client_networks: tuple[IPNetwork, ...]
    max_message_size: int
    max_recipients: int
    timeout: float
    max_connections: int
    max_connections_per_client: int
    shutdown_grace: float
    tls_cert_file: Path | None = None  # STARTTLS offered to clients when set (with tls_key_file)
    tls_key_file: Path | None = None
    require_starttls: bool = False
    auth_users_file: Path | None = None  # SMTP AUTH (after STARTTLS) when set
    auth_max_failures: int = 5


@dataclass(frozen=True)
class NextHopSettings:
    host: str
    port: int
    starttls: StartTLS
    verify_certificate: bool
    timeout: float
    transaction_timeout: float
    directory: Path | None  # deliver into this directory as .eml files instead of SMTP (first tries)


@dataclass(frozen=True)
class ProcessingSettings:
    max_parts: int
    max_depth: int
    max_header_bytes: int
    time_budget: float


@dataclass(frozen=True)
class FooterTemplate:
    text: str  # plain text; "{link}" and "{company}" are replaced
    html: str  # HTML markup; "{link}" and "{company}" are replaced by escaped values


@dataclass(frozen=True)
class DkimKeySettings:
    selector: str
    key_file: Path
    algorithm: DkimAlgorithm
    create_if_missing: bool  # the demo key of the embedded defaults; never set it in production


@dataclass(frozen=True)
class TenantSettings:
    id: str
    name: str
    domains: tuple[str, ...]
    dkim: tuple[DkimKeySettings, ...]
    footers: Mapping[str, FooterTemplate]
    # Referrals that earn one free slot (issue 6).
    referral_ratio: int = 10
    # "hash", or "clear" only when this company opted in (defaults to referral.store_recipient).
    store_recipient: Literal["hash", "clear"] = "hash"
    # "direct": links go to referral.base_url + token; "click": via mailrelay's /r/<token> (http.public_url).
    link_mode: Literal["direct", "click"] = "direct"

    def owns(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.domains)


@dataclass(frozen=True)
class ReferralSettings:
    base_url: str
    store_recipient: Literal["hash", "clear"]
    hash_key_file: Path
    # The same applicant rejected again by the same company within this many days is one referral.
    dedupe_days: int = 180
    # After this many days `mailrelay purge` pseudonymises event details (ledger totals stay); 0 = never.
    retention_days: int = 400


@dataclass(frozen=True)
class HttpSettings:
    """The click redirect and the registration webhook (issue 6): mailrelay/tracking."""

    listen: Listen | None = None
    public_url: str = ""  # base of click-mode links: public_url + "/r/" + token
    webhook_secrets: tuple[str, ...] = ()  # Standard Webhooks secrets ("whsec_" + base64); several rotate
    webhook_tolerance: float = 300.0  # seconds a webhook-timestamp may be off (replay window)
    scanner_seconds: float = 10.0  # a click this soon after delivery is a link scanner's


@dataclass(frozen=True)
class Settings:
    source: Path
    state_dir: Path
    smtp: SmtpSettings
    next_hop: NextHopSettings
    database_url: str
    metrics_listen: Listen | None
    rules: tuple[Path, ...]
    rule_globs: tuple[str, ...]
    processing: ProcessingSettings
    referral: ReferralSettings
    tenants: tuple[TenantSettings, ...]
    internal_domains: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    footers: Mapping[str, FooterTemplate] = field(default_factory=dict)
    http: HttpSettings = field(default_factory=HttpSettings)

    def tenant_for_domain(self, domain: str) -> TenantSettings | None:
        for tenant in self.tenants:
            if tenant.owns(domain):
                return tenant
        return None


def default_config_path() -> Path:
    """The embedded defaults: the shipped config.toml (packaged under mailrelay/defaults)."""
    return Path(str(resources.files("mailrelay") / "defaults" / "config.toml"))


class _Reader:
    """Typed access to one TOML table that remembers where it is, for precise errors."""

    def __init__(self, file: str, data: Mapping[str, Any], where: tuple[str, ...] = ()) -> None:
        self.file = file
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, (".".join((*self.where, key)),), problem)

    def _get(self, key: str, kind: type[T], kind_name: str, default: T | None) -> T:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        # bool is an int subclass: a port of `true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {kind_name}, not {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, default: str | None = None, *, allow_empty: bool = False) -> str:
        value = self._get(key, str, "a string", default)
        if not value and not allow_empty:
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int | None = None, *, low: int = 0, high: int = 2**31) -> int:
        value = self._get(key, int, "an integer", default)
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, not {value}")
        return value

    def number(self, key: str, default: float | None = None, *, low: float = 0.0) -> float:
        self.used.add(key)
        raw = self.data.get(key, default)
        if raw is None:
            raise self.error(key, "is required")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.error(key, f"must be a number, not {type(raw).__name__} {raw!r}")
        # TOML has nan and inf (TOML 1.0, Float): nan slips past every comparison below, and a nan or
        # infinite timeout makes asyncio drop every connection or wait forever.
        if not math.isfinite(raw):
            raise self.error(key, f"must be a finite number, not {raw}")
        if raw <= low:
            raise self.error(key, f"must be greater than {low}, not {raw}")
        return float(raw)

    def flag(self, key: str, default: bool | None = None) -> bool:
        return self._get(key, bool, "true or false", default)

    def str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self._get(key, list, "a list of strings", default)
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.error(key, f"must be a list of non-empty strings, found {item!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def table(self, key: str, *, required: bool = False) -> _Reader:
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return _Reader(self.file, value, (*self.where, key))

    def tables(self, key: str) -> list[_Reader]:
        self.used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "must be an array of tables ([[" + ".".join((*self.where, key)) + "]])")
        return [_Reader(self.file, v, (*self.where, f"{key}[{i}]")) for i, v in enumerate(value)]

    def finish(self) -> None:
        """Unknown keys are errors: a typo must not silently fall back to a default."""
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")


def _listen(r: _Reader, key: str, default: str | None) -> Listen:
    text = r.text(key, default)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.error(key, f"must be HOST:PORT (e.g. 127.0.0.1:10025), not {text!r}")
    return Listen(host, int(port))


# A host name label (RFC 1123 §2.1, which lets a label start with a digit): letters, digits and hyphens,
# not a hyphen at either end, at most 63 octets (RFC 1035 §2.3.4). RFC 5321's sub-domain is the same.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host_name(text: str) -> bool:
    """Dot-separated host name labels (a DKIM selector and d= are the same, RFC 6376 §3.1)."""
    return len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split("."))


def _is_address_literal(text: str) -> bool:
    """RFC 5321 §4.1.3: [192.0.2.1] or [IPv6:2001:db8::1]."""
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def _is_domain(text: str) -> bool:
    """A host name in A-labels or U-labels (IDNA 2003, Python's codec): an SMTPUTF8 From domain arrives as
    U-labels, and domains are compared as strings."""
    labels = []
    for label in text.split("."):
        if not label.isascii():
            try:
                a_label = label.encode("idna")
            except UnicodeError:
                return False
            # Nameprep maps some labels to others (fullwidth ａ to a): such a domain would never match.
            if a_label.decode("idna") != label:
                return False
            label = a_label.decode("ascii")
        labels.append(label)
    return is_host_name(".".join(labels))


def _domains(r: _Reader, key: str, default: list[str] | None = None) -> tuple[str, ...]:
    """Domains as relay.domain_of() gives them: lower case, no final dot."""
    domains = tuple(x.lower().rstrip(".") for x in r.str_list(key, default))
    for domain in domains:
        if _is_domain(domain):
            continue
        if "@" in domain:
            bare = domain.rpartition("@")[2]
            raise r.error(
                key,
                f"{domain!r} is not a domain name: write {bare!r}"
                ' (a rule\'s senders take "@domain", domains do not)',
            )
        raise r.error(
            key,
            f"{domain!r} is not a domain name (letters, digits and hyphens in dot-separated labels,"
            " e.g. example.co.jp)",
        )
    return domains


# Postfix's relayhost syntax, [host]:port or host:port (an IPv6 address is told apart before this is tried).
_HOST_AND_PORT = re.compile(r"\[([^\[\]]+)\](?::(\d+))?|([^:\[\]]+):(\d+)")
# Underscores too: container and compose service names (postfix_relay) resolve through Docker's DNS.
_RESOLVABLE_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def _next_hop_host(r: _Reader) -> str:
    host = r.text("host", "127.0.0.1")
    try:
        ipaddress.ip_address(host)  # ::1 too: aiosmtplib connects to an IPv6 address as written
        return host
    except ValueError:
        pass
    if len(host) <= 254 and _RESOLVABLE_NAME.fullmatch(host):
        return host
    match = _HOST_AND_PORT.fullmatch(host)
    if match is None:
        raise r.error("host", f"must be a host name or an IP address, not {host!r}")
    bare, port = match[1] or match[3], match[2] or match[4]
    fix = f'write host = "{bare}"' + (f" and port = {port}" if port else "")
    raise r.error(
        "host",
        f"must be a host name or an IP address without brackets or port, not {host!r}: {fix} (the port goes"
        " in next_hop.port; mailrelay never looks up MX records, so Postfix's brackets are not needed)",
    )


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _optional_path(r: _Reader, key: str, base: Path) -> Path | None:
    text = r.text(key, "", allow_empty=True)
    return _resolve(base, text) if text else None


_FOOTER_FIELDS = ("link", "company")
_FOOTER_RULE = "use only {link} and {company}, without attribute, index, conversion or format spec"


class _NeedsPassphrase(Exception):
    pass


def _ask_passphrase() -> bytes:
    raise _NeedsPassphrase


def _check_tls_pair(r: _Reader, cert: Path, key: Path) -> None:
    """Load the pair as the SMTP server will, so that a missing file or a key of another certificate is a
    config error at check-config, not a traceback when serve starts."""
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        try:
            path.open("rb").close()
        except FileNotFoundError as exc:
            raise r.error(name, f"{path} does not exist") from exc
        except OSError as exc:
            raise r.error(name, f"cannot read {path}: {exc.strerror}") from exc
    try:
        # Without a callback OpenSSL would ask for a passphrase on the terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_ask_passphrase)
    except _NeedsPassphrase as exc:
        raise r.error(
            "tls_key_file",
            f"{key} needs a passphrase; mailrelay starts unattended, so give it the key without one"
            " (openssl pkey -in KEY -out PLAIN_KEY)",
        ) from exc
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise r.error("tls_key_file", f"{key} is not the private key of tls_cert_file") from exc
        # OpenSSL says "PEM lib" for either file: the certificate alone tells which one it is.
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
        except ssl.SSLError:
            raise r.error("tls_cert_file", f"{cert} holds no PEM certificate") from exc
        raise r.error("tls_key_file", f"{key} holds no PEM private key") from exc


def _footer_placeholders(r: _Reader, key: str, value: str) -> None:
    """The footer is rendered with str.format, which would follow `{link.upper}` or `{company[0]}` into the
    string's attributes: only the bare names are allowed, so that what reaches applicants is the text."""
    try:
        fields = [
            (name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None
        ]
    except ValueError as exc:  # a lone { or }
        raise r.error(key, f"bad placeholder ({exc}): {_FOOTER_RULE} ({{{{ and }}}} for a brace)") from exc
    for name, spec, conversion in fields:
        if name not in _FOOTER_FIELDS or spec or conversion:
            placeholder = (
                "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            raise r.error(key, f"bad placeholder {placeholder}: {_FOOTER_RULE}")
    if "link" not in (name for name, _, _ in fields):
        raise r.error(key, "must contain {link}, the applicant's referral link")


def _footer(r: _Reader) -> FooterTemplate:
    text = r.text("text")
    html = r.text("html")
    for key, value in (("text", text), ("html", html)):
        _footer_placeholders(r, key, value)
    r.finish()
    return FooterTemplate(text=text, html=html)


def _footers(r: _Reader) -> dict[str, FooterTemplate]:
    footers = {}
    for name in r.data:
        footers[name] = _footer(r.table(name))
    return footers


def expand_rule_globs(patterns: tuple[str, ...]) -> tuple[Path, ...]:
    """The rule files the patterns match now (again on every reload, so a new file is picked up)."""
    paths: list[Path] = []
    for pattern in patterns:
        anchor = Path(pattern).anchor
        matched = sorted(Path(anchor).glob(pattern[len(anchor) :]))
        if not matched:
            raise ValueError(f"{pattern!r} matches no file")
        paths.extend(matched)
    return tuple(paths)


def load_settings(path: Path) -> Settings:
    """Read and validate `path`; every problem is a ConfigError naming file, key and what is wrong."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(file, (), "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, (), f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, (), f"not valid TOML: {exc}") from exc

    root = _Reader(file, data)
    config_dir = path.resolve().parent
    # state_dir is relative to the working directory, like Postfix's queue_directory is absolute: the
    # embedded defaults then keep their database, demo key and outbox in ./var of wherever they run.
    state_dir = Path(os.path.expanduser(root.text("state_dir", "var"))).absolute()

    s = root.table("smtp")
    networks = []
    for text in s.str_list("client_networks", ["127.0.0.0/8", "::1/128"]):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise s.error("client_networks", f"{text!r} is not an IP network ({exc})") from exc
    hostname = s.text("hostname", "localhost")
    # It goes verbatim into the 220 greeting, the EHLO reply and our EHLO to the next hop (RFC 5321
    # §4.1.1.1: a domain or an address literal); CR LF in it would inject reply lines.
    if not (is_host_name(hostname) or _is_address_literal(hostname)):
        raise s.error(
            "hostname",
            "must be a host name (letters, digits and hyphens in dot-separated labels, RFC 1123 §2.1)"
            f" or an address literal such as [192.0.2.1], not {hostname!r}",
        )
    smtp = SmtpSettings(
        listen=_listen(s, "listen", "127.0.0.1:10025"),
        hostname=hostname,
        client_networks=tuple(networks),
        max_message_size=s.integer("max_message_size", 33554432, low=1024),
        max_recipients=s.integer("max_recipients", 1000, low=1),
        timeout=s.number("timeout", 300.0),
        max_connections=s.integer("max_connections", 500, low=1),
        max_connections_per_client=s.integer("max_connections_per_client", 100, low=1),
        shutdown_grace=s.number("shutdown_grace", 60.0),
        tls_cert_file=_optional_path(s, "tls_cert_file", config_dir),
        tls_key_file=_optional_path(s, "tls_key_file", config_dir),
        require_starttls=s.flag("require_starttls", False),
        auth_users_file=_optional_path(s, "auth_users_file", config_dir),
        auth_max_failures=s.integer("auth_max_failures", 5, low=1),
    )
    if (smtp.tls_cert_file is None) != (smtp.tls_key_file is None):
        raise s.error("tls_key_file", "tls_cert_file and tls_key_file go together")
    if (smtp.require_starttls or smtp.auth_users_file) and smtp.tls_cert_file is None:
        raise s.error("tls_cert_file", "STARTTLS needs a certificate (AUTH is only offered after STARTTLS)")
    if smtp.tls_cert_file is not None and smtp.tls_key_file is not None:
        _check_tls_pair(s, smtp.tls_cert_file, smtp.tls_key_file)
    s.finish()

    n = root.table("next_hop")
    directory_text = n.text("directory", "", allow_empty=True)
    next_hop = NextHopSettings(
        host=_next_hop_host(n),
        port=n.integer("port", 10026, low=1, high=65535),
        starttls=cast(StartTLS, n.choice("starttls", ("off", "opportunistic", "required"), "opportunistic")),
        verify_certificate=n.flag("verify_certificate", True),
        timeout=n.number("timeout", 60.0),
        transaction_timeout=n.number("transaction_timeout", 90.0),
        directory=_resolve(state_dir, directory_text) if directory_text else None,
    )
    if next_hop.timeout > next_hop.transaction_timeout:
        raise n.error("timeout", "must not exceed transaction_timeout")
    n.finish()

    d = root.table("database")
    database_url = d.text("url", "", allow_empty=True) or f"sqlite:///{state_dir / 'mailrelay.db'}"
    # Parsed here so that a bad URL is a config error, not an SQLAlchemy traceback from every command that
    # opens the store. The value is not echoed: it may hold a password.
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise d.error(
            "url",
            'is not an SQLAlchemy URL: write e.g. "postgresql+psycopg://mailrelay@db.example/mailrelay" or'
            ' "sqlite:////var/lib/mailrelay/mailrelay.db", or "" for SQLite in state_dir',
        ) from exc
    try:
        url.get_dialect()  # imports the dialect's module, not its driver
    except NoSuchModuleError as exc:
        # "postgres://" is what other tools write; SQLAlchemy dropped that name in 1.4.
        raise d.error(
            "url",
            f"names {url.drivername!r}, which is no SQLAlchemy dialect here: PostgreSQL is"
            ' "postgresql+psycopg://mailrelay@db.example/mailrelay"',
        ) from exc
    d.finish()

    m = root.table("metrics")
    metrics_text = m.text("listen", "127.0.0.1:9325", allow_empty=True)
    metrics_listen = _listen(m, "listen", "127.0.0.1:9325") if metrics_text else None
    m.finish()

    p = root.table("processing")
    processing = ProcessingSettings(
        max_parts=p.integer("max_parts", 1000, low=1),
        max_depth=p.integer("max_depth", 50, low=1, high=500),
        max_header_bytes=p.integer("max_header_bytes", 102400, low=1024),
        time_budget=p.number("time_budget", 5.0),
    )
    p.finish()

    ru = root.table("rules")
    patterns = ru.str_list("paths", ["rules/*.toml"])
    rule_globs = tuple(str(_resolve(config_dir, pattern)) for pattern in patterns)
    try:
        rule_paths = expand_rule_globs(rule_globs)
    except ValueError as exc:
        raise ru.error("paths", str(exc)) from exc
    ru.finish()

    rf = root.table("referral", required=True)
    base_url = rf.text("base_url")
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise rf.error("base_url", f"must be an https URL without query or fragment, not {base_url!r}")
    if any(c in base_url for c in "\"'<> \t\r\n"):
        raise rf.error("base_url", "must not contain quotes, angle brackets or whitespace")
    referral = ReferralSettings(
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        store_recipient=cast(
            Literal["hash", "clear"], rf.choice("store_recipient", ("hash", "clear"), "hash")
        ),
        hash_key_file=_resolve(state_dir, rf.text("hash_key_file", "recipient-hash.key")),
        dedupe_days=rf.integer("dedupe_days", 180, high=36500),
        retention_days=rf.integer("retention_days", 400, high=36500),
    )
    if referral.retention_days and referral.retention_days < referral.dedupe_days:
        # Purging an applicant's hash inside the window would let the same applicant count twice.
        raise rf.error("retention_days", f"must be 0 or at least dedupe_days ({referral.dedupe_days})")
    rf.finish()

    h = root.table("http")
    http_listen_text = h.text("listen", "", allow_empty=True)
    public_url = h.text("public_url", "", allow_empty=True).rstrip("/")
    if public_url:
        pu = urlsplit(public_url)
        if pu.scheme not in ("https", "http") or not pu.hostname or pu.query or pu.fragment:
            raise h.error(
                "public_url", f"must be an http(s) URL without query or fragment, not {public_url!r}"
            )
    webhook_secrets = tuple(h.str_list("webhook_secrets", []))
    # Imported here: mailrelay.tracking imports this module. Decoding with the verifier's own function means
    # that a secret accepted here is one every webhook can be checked with (a bad one made each a 500).
    from mailrelay.tracking.webhook import SECRET_PREFIX, secret_bytes

    # Secrets are named by their place in the list: an error message must not print one.
    for number, secret in enumerate(webhook_secrets, 1):
        if not secret.startswith(SECRET_PREFIX):
            raise h.error("webhook_secrets", f"secret {number} does not start with {SECRET_PREFIX}")
        try:
            size = len(secret_bytes(secret))
        except ValueError as exc:
            raise h.error(
                "webhook_secrets",
                f"secret {number} is not {SECRET_PREFIX} followed by base64 (standard alphabet, padded)",
            ) from exc
        if size < 24:  # Standard Webhooks: secrets of 24 to 64 bytes
            raise h.error(
                "webhook_secrets", f"secret {number} decodes to {size} bytes; at least 24 are needed"
            )
    http = HttpSettings(
        listen=_listen(h, "listen", "") if http_listen_text else None,
        public_url=public_url,
        webhook_secrets=webhook_secrets,
        webhook_tolerance=h.number("webhook_tolerance", 300.0),
        scanner_seconds=h.number("scanner_seconds", 10.0),
    )
    h.finish()

    footers = _footers(root.table("footers"))

    tenants: list[TenantSettings] = []
    seen_ids: set[str] = set()
    seen_domains: dict[str, str] = {}
    for t in root.tables("tenants"):
        tenant_id = t.text("id")
        if tenant_id in seen_ids:
            raise t.error("id", f"duplicate tenant id {tenant_id!r}")
        seen_ids.add(tenant_id)
        domains = _domains(t, "domains")
        if not domains:
            raise t.error("domains", "must list at least one sending domain")
        for domain in domains:
            if domain in seen_domains:
                raise t.error("domains", f"{domain!r} already belongs to tenant {seen_domains[domain]!r}")
            seen_domains[domain] = tenant_id
        keys = []
        for k in t.tables("dkim"):
            selector = k.text("selector")
            # RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); it is the s= tag and the first labels
            # of SELECTOR._domainkey.DOMAIN, so anything else makes every signature fail to verify.
            if not is_host_name(selector):
                raise k.error(
                    "selector",
                    "must be DNS labels (letters, digits and hyphens, separated by dots; RFC 6376 §3.1),"
                    f" not {selector!r}",
                )
            keys.append(
                DkimKeySettings(
                    selector=selector,
                    key_file=_resolve(state_dir, k.text("key_file")),
                    algorithm=cast(
                        DkimAlgorithm, k.choice("algorithm", ("rsa-sha256", "ed25519-sha256"), "rsa-sha256")
                    ),
                    create_if_missing=k.flag("create_if_missing", False),
                )
            )
            k.finish()
        if not keys:
            raise t.error("dkim", "every tenant needs a DKIM key ([[tenants.dkim]] selector and key_file)")
        tenant_footers = {**footers, **_footers(t.table("footers"))}
        tenants.append(
            TenantSettings(
                id=tenant_id,
                name=t.text("name", tenant_id),
                domains=domains,
                dkim=tuple(keys),
                footers=tenant_footers,
                referral_ratio=t.integer("referral_ratio", 10, low=1, high=1000),
                store_recipient=cast(
                    Literal["hash", "clear"],
                    t.choice("store_recipient", ("hash", "clear"), referral.store_recipient),
                ),
                link_mode=cast(
                    Literal["direct", "click"], t.choice("link_mode", ("direct", "click"), "direct")
                ),
            )
        )
        if tenants[-1].link_mode == "click" and not http.public_url:
            raise t.error("link_mode", '"click" needs http.public_url, the address applicants reach /r/ on')
        t.finish()
    if not tenants:
        raise root.error("tenants", "at least one [[tenants]] table is required")

    lg = root.table("log")
    log_level = lg.choice("level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
    log_format = lg.choice("format", ("text", "json"), "text")
    lg.finish()

    internal = _domains(root, "internal_domains", [])
    root.finish()
    return Settings(
        source=path,
        state_dir=state_dir,
        smtp=smtp,
        next_hop=next_hop,
        database_url=database_url,
        metrics_listen=metrics_listen,
        rules=rule_paths,
        rule_globs=rule_globs,
        processing=processing,
        referral=referral,
        tenants=tuple(tenants),
        internal_domains=internal,
        log_level=log_level,
        log_format=cast(LogFormat, log_format),
        footers=footers,
        http=http,
    )
