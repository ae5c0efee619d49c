"""DKIM keys (load, check, make) and signing over the exact bytes that go on the wire."""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
import dkim.canonicalization
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mailrelay.config import DkimKeySettings, TenantSettings, is_host_name
from mailrelay.errors import ConfigError
from mailrelay.message import WireReady, crlf_only

# RFC 6376 §5.4.1 recommends these; each is signed once more than it occurs (§5.4.2, §8.15 over-signing),
# so a header added after signing (a second Subject, a Reply-To) breaks the signature.
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-mailrelay-decorated",
)
# Signed, and over-signed likewise, when the message carries them: the rest of RFC 6376 §5.4.1's list, and
# Sender. A decorated copy loses the company's own signature (strip-dkim), so ours is the only one left to
# cover them: RFC 8058 §4 has receivers offer one-click unsubscribe only when List-Unsubscribe and
# List-Unsubscribe-Post are in the h= of a valid signature, and a List-Unsubscribe outside it can be
# rewritten under our signature. Absent, they are not listed: h= stays as it was for ordinary mail.
SIGNED_WHEN_PRESENT = (
    "sender",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
)

log = logging.getLogger("mailrelay.dkim")

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


_dkimpy_rfc822_parse: Callable[[bytes], tuple[list[list[bytes]], bytes]] = dkim.rfc822_parse
_dkimpy_relaxed_body: Callable[[bytes], bytes] = dkim.canonicalization.Relaxed.canonicalize_body

# Large enough that a 5 KB or 50 KB message takes dkimpy's own path unchanged. Over it, the body is
# canonicalised in chunks: dkimpy's two whole-body regexes on a 27 MB message are C calls of 300-380 ms
# each, holding the GIL, and the event loop cannot run meanwhile (issue 5, scripts/reliability "stall").
BODY_CHUNK_BYTES = 256 * 1024

# A space before a space or a CR: where relaxed canonicalisation could change a line with no tab. One
# regex that looks only at the spaces costs a fifth of what `b"  " in body` and `b" \r\n" in body` do
# together (issue 8 profile: ~26 µs per 20 KB body; bytes' two-byte search is slow on text).
_SPACE_BEFORE_SPACE_OR_CR = re.compile(rb" [ \r]")


def relaxed_body(body: bytes, chunk_bytes: int = BODY_CHUNK_BYTES) -> bytes:
    """dkimpy's relaxed body canonicalisation (RFC 6376 §3.4.4), a chunk of whole lines at a time.

    Both of its substitutions stay within a line, so applying them to chunks that end after a CRLF gives
    the same bytes as applying them to the whole body; the end-of-body rules then run once on the result.
    """
    canon = dkim.canonicalization
    if b"\t" not in body and _SPACE_BEFORE_SPACE_OR_CR.search(body) is None:
        # No tab, no run of spaces, no space before a line end: both substitutions would change nothing.
        return bytes(canon.correct_empty_body(canon.strip_trailing_lines(body)))
    if len(body) <= chunk_bytes:
        return bytes(_dkimpy_relaxed_body(body))
    pieces = []
    start = 0
    while start < len(body):
        end = body.find(b"\r\n", start + chunk_bytes)
        end = len(body) if end < 0 else end + 2
        pieces.append(canon.compress_whitespace(canon.strip_trailing_whitespace(body[start:end])))
        start = end
    return bytes(canon.correct_empty_body(canon.strip_trailing_lines(b"".join(pieces))))


_LINE_BREAK = re.compile(rb"\r?\n")
_WSP_RUN = re.compile(rb"[\x09\x20]+")


def relaxed_headers(fields: Sequence[Sequence[bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's Relaxed.canonicalize_headers (RFC 6376 §3.4.2) with its two patterns compiled once: dkimpy
    calls re.sub with pattern strings, a cache lookup per field and pattern (issue 8 profile). One
    difference: at the end of a value only WSP goes, as the RFC and Mail::DKIM have it; dkimpy's strip()
    also took a vertical tab or a form feed there, and the signature of such a field did not verify."""
    return [(name.lower().rstrip(), _relaxed_value(value)) for name, value in fields]


# What ends a value: WSP (RFC 5234 §B.1: space and tab) and the line break the unfolding would remove.
_VALUE_END = b" \t\r\n"


def _relaxed_value(value: bytes) -> bytes:
    # Most values are one line with single spaces, where both substitutions change nothing and only the
    # strip remains: three searches on a short value cost less than two regex calls (issue 8 profile). A
    # parsed value ends with its line's CRLF (dkimpy's rfc822_parse), which the strip removes like the
    # unfolding would: only a line break before the last byte makes the substitutions matter. At the start,
    # whitespace after the colon goes (Mail::DKIM's \s*, which takes VT and FF too, as lstrip() does).
    if value.find(b"\n", 0, -1) >= 0 or b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", _LINE_BREAK.sub(b"", value))
    return value.lstrip().rstrip(_VALUE_END) + b"\r\n"


def split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse, splitting only the header block into lines when the message has CRLF line
    endings only (as every message we sign has: relay.normalize_line_endings); the same result, without
    a list of every body line (a GIL-holding call of 300 ms on 27 MB, issue 5). WireReady content is known
    to have them, and is not scanned again (message.splice)."""
    blank = 0 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n") + 2
    if blank == 1 or (type(message) is not WireReady and not crlf_only(message)):
        return _dkimpy_rfc822_parse(message)  # no empty line, or a bare CR or LF: dkimpy's own path
    headers, _ = _dkimpy_rfc822_parse(message[: blank + 2])
    return headers, message[blank + 2 :]


PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# dkimpy folds at column 72 counting the field name (fold's namelen).
_NAME_LENGTH = len(b"DKIM-Signature")
# What b= holds while the field is folded for hashing (dkim_signature says why), and how the folded field
# then ends.
_B_PLACEHOLDER = b"0" * 60
_B_TAG_PLACEHOLDER = b"b=" + _B_PLACEHOLDER
# The RSA signature's parameters, built once rather than per message.
_PKCS1V15 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())


@functools.lru_cache(maxsize=64)
def private_key(algorithm: str, private: bytes) -> PrivateKey:
    """The key object for a LoadedKey's bytes, parsed once (a PEM parse costs more than the signature)."""
    if algorithm == "rsa-sha256":
        key = serialization.load_pem_private_key(private, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return key
    return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(private, validate=True))


def selected_fields(headers: list[list[bytes]], include_headers: Sequence[bytes]) -> list[list[bytes]]:
    """The fields `h=` signs, in its order: each name takes its instances from the bottom up, and a name
    listed once more than it occurs selects nothing the last time (RFC 6376 §5.4.2). dkimpy's
    select_headers does the same over every field canonicalised first; this canonicalises only these."""
    instances: dict[bytes, list[list[bytes]]] = {}
    for field in headers:
        instances.setdefault(field[0].lower().rstrip(), []).append(field)
    return [instances[name].pop() for name in include_headers if instances.get(name)]


def dkim_signature(
    message: bytes,
    *,
    selector: bytes,
    domain: bytes,
    algorithm: bytes,
    key: PrivateKey,
    include_headers: Sequence[bytes],
    timestamp: int,
) -> bytes:
    """The DKIM-Signature field (CRLF-terminated) that `dkim.sign` returns for relaxed/relaxed, linesep
    CRLF and no l= (RFC 6376 §8.2: l= lets anyone append content under our signature), byte for byte:
    tests/test_signing.py checks it against dkimpy and Mail::DKIM (but for a signed value ending in a
    vertical tab or form feed, where dkimpy strays from RFC 6376 §3.4.2: relaxed_headers).

    dkimpy's own call spends more in Python than the RSA signature costs in OpenSSL: a DKIM object, its
    logger and policy sets, a PEM parse per call, a pure-Python RSA (15 ms per signature) and a hash
    wrapper (issue 8). This keeps dkimpy's canonicalisation, header selection and folding and drops the
    rest: the RSA-2048 signature is computed by OpenSSL through `cryptography`, the key parsed once.
    """
    headers, body = split_message(message)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    # dkimpy's tag order (RFC 6376 §3.5); b= is filled with a placeholder first so that it folds onto a
    # line of its own, and refolding once it holds the signature changes no other tag's whitespace.
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", selector),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include_headers)),
        (b"bh", body_hash),
        (b"b", _B_PLACEHOLDER),
    ]
    folded = dkim.fold(b"; ".join(b"=".join(f) for f in fields), _NAME_LENGTH)
    # b= empty, as dkimpy's RE_BTAG.sub(b"\\1", folded) leaves it: the placeholder is the last tag and, with
    # no space in it and shorter than a folded line, ends the field whole, so it is cut off instead (0.3 µs
    # against the substitution's 14; in the relay py-spy put ~40 µs on the substitution's line: issue 8).
    if folded.endswith(_B_TAG_PLACEHOLDER):
        unsigned = folded[: -len(_B_PLACEHOLDER)]
    else:
        unsigned = dkim.RE_BTAG.sub(b"\\1", folded)
    # RFC 6376 §3.7: the selected fields, then the signature field itself with b= empty and no CRLF.
    hashed = relaxed_headers(selected_fields(headers, include_headers))
    signature_field = relaxed_headers([(b"DKIM-Signature", b" " + unsigned)])
    hashed += [(name, value.rstrip()) for name, value in signature_field]
    digest = hashlib.sha256(b"".join(name + b":" + value for name, value in hashed)).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, _PKCS1V15, _PREHASHED_SHA256)
    else:
        signature = key.sign(digest)  # RFC 8463 §3: Ed25519 over the SHA-256 hash
    fields[-1] = (b"b", base64.b64encode(signature))
    value: bytes = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", _NAME_LENGTH, b"\r\n")
    return b"DKIM-Signature: " + value


class SigningError(Exception):
    """The copy cannot be signed (key unusable); the relay forwards the original instead."""


@dataclass(frozen=True)
class LoadedKey:
    selector: str
    algorithm: str
    private: bytes  # PEM for RSA, base64 of the 32-byte seed for Ed25519 (what private_key reads)


def header_counts(raw: bytes) -> dict[str, int]:
    """How often each field name occurs in the top-level header block."""
    end = raw.find(b"\r\n\r\n")
    block = raw if end < 0 else raw[: end + 2]
    counts: dict[str, int] = {}
    for line in block.split(b"\r\n"):
        match = _FIELD_NAME.match(line)
        if match:
            name = match.group(1).decode("ascii").lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


def include_headers(raw: bytes) -> list[bytes]:
    counts = header_counts(raw)
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        names.extend([name.encode()] * (counts.get(name, 0) + 1))
    for name in SIGNED_WHEN_PRESENT:
        if counts.get(name):
            names.extend([name.encode()] * (counts[name] + 1))
    return names


def key_where(tenant: int, key: int) -> str:
    """Where a key_file is in config.toml, named as config.py names tables: tenants[0].dkim[1].key_file."""
    return f"tenants[{tenant}].dkim[{key}].key_file"


def check_key_file(settings: DkimKeySettings, file: str, where: str) -> None:
    """Refuse a key others can read: a DKIM key lets anyone send as the company."""
    try:
        mode = settings.key_file.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigError(file, (where,), f"{settings.key_file} does not exist") from exc
    except OSError as exc:
        raise ConfigError(file, (where,), f"cannot read {settings.key_file}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            file,
            (where,),
            f"{settings.key_file} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it",
        )


def load_key(settings: DkimKeySettings, file: str, where: str) -> LoadedKey:
    """read_key, after making the demo key when the settings ask for one and it does not exist yet."""
    if settings.create_if_missing and _missing(settings.key_file):
        try:
            txt = make_key_pair(settings.key_file, settings.algorithm)
        except OSError as exc:
            raise ConfigError(file, (where,), f"cannot make {settings.key_file}: {exc.strerror}") from exc
        log.warning(
            "made demo DKIM key %s; its DNS TXT record at %s._domainkey.<domain>: %s",
            settings.key_file,
            settings.selector,
            txt,
        )
    return read_key(settings, file, where)


def _missing(path: Path) -> bool:
    """Whether the file is known not to exist: exists() raises PermissionError in a directory the user
    cannot search, and then read_key says so as a config error."""
    try:
        return not path.exists()
    except OSError:
        return False


def read_key(settings: DkimKeySettings, file: str, where: str) -> LoadedKey:
    """The key of `settings`, or a ConfigError naming `file › where` if it cannot be read or used."""
    check_key_file(settings, file, where)
    try:
        data = settings.key_file.read_bytes()
    except OSError as exc:
        # A root-owned key under User=mailrelay, a directory: a config problem (exit 2), not a crash, so
        # that systemd's RestartPreventExitStatus=2 stops the restarts.
        raise ConfigError(file, (where,), f"cannot read {settings.key_file}: {exc.strerror}") from exc
    try:
        if settings.algorithm == "rsa-sha256":
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
                raise ValueError("not an RSA private key of at least 2048 bits")
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        else:
            seed = base64.b64decode(data.strip(), validate=True)
            ed25519.Ed25519PrivateKey.from_private_bytes(seed)
            private = data.strip()
    except TypeError as exc:
        # cryptography's answer to an encrypted PEM without a password; the relay has no passphrase to give.
        raise ConfigError(
            file, (where,), f"{settings.key_file} is encrypted: mailrelay needs the key without a passphrase"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        # The exception text of a key parser may quote key material: never put it in a message.
        raise ConfigError(
            file, (where,), f"{settings.key_file} is not a usable {settings.algorithm} key"
        ) from exc
    return LoadedKey(selector=settings.selector, algorithm=settings.algorithm, private=private)


def make_key_pair(path: Path, algorithm: str) -> str:
    """Write a new private key to `path` (mode 600) and return the DNS TXT record value for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if algorithm == "rsa-sha256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        data = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        txt = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    else:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        seed = ed_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        data = base64.b64encode(seed) + b"\n"
        public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        txt = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return txt


def public_txt(key: LoadedKey) -> str:
    """The TXT record value for a key read_key accepted (so it matches its algorithm)."""
    private = private_key(key.algorithm, key.private)
    if isinstance(private, rsa.RSAPrivateKey):
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def published_txt(name: str, timeout: float = 3.0) -> list[str] | None:
    """The TXT strings published at `name`; [] when there are none; None when DNS cannot be asked."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError):
        return None
    return [b"".join(record.strings).decode("ascii", "replace") for record in answer]


def _p_tag(txt: str) -> str:
    for tag in txt.split(";"):
        name, _, value = tag.strip().partition("=")
        if name.strip() == "p":
            return "".join(value.split())
    return ""


def verify_published(selector: str, domain: str, txt: str) -> str:
    """ "matches", "differs", "missing" or "unreachable": what DNS says of our key (RFC 6376 §3.6.1)."""
    published = published_txt(f"{selector}._domainkey.{a_label(domain)}")
    if published is None:
        return "unreachable"
    if not published:
        return "missing"
    return "matches" if any(_p_tag(value) == _p_tag(txt) for value in published) else "differs"


# RFC 6376 §3.1: a selector is sub-domain *("." sub-domain), d= a domain name of two or more labels.
# Anything else makes a zone line no name server loads.
def is_selector(text: str) -> bool:
    return is_host_name(text)


def is_domain(text: str) -> bool:
    return "." in text and is_host_name(text)


def a_label(domain: str) -> str:
    """A domain as DNS and d= carry it (RFC 6376 §3.5, RFC 5890 §2.3.2.1): config takes U-labels too (an
    SMTPUTF8 From domain arrives so), and checks they convert with the same codec."""
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


def dns_record(selector: str, domain: str, txt: str) -> str:
    """A zone-file line; TXT strings are split at 255 octets (RFC 1035 §3.3.14)."""
    chunks = " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
    return f"{selector}._domainkey.{a_label(domain)}. IN TXT ( {chunks} )"


class DkimSigner:
    """Signs a copy for its tenant with every configured key: relaxed/relaxed, no l=, over-signed headers."""

    def __init__(self, tenants: tuple[TenantSettings, ...], config_file: str) -> None:
        # `tenants` is Settings.tenants, in the file's order: its indexes are those of [[tenants]] there.
        self.keys: dict[str, tuple[LoadedKey, ...]] = {
            t.id: tuple(load_key(k, config_file, key_where(i, j)) for j, k in enumerate(t.dkim))
            for i, t in enumerate(tenants)
        }

    def signing_domain(self, tenant: TenantSettings, from_domain: str) -> str:
        """d= is the tenant domain the From address belongs to, so DMARC aligns (RFC 7489 §3.1.1): the
        nearest one, whatever the order of `domains`, so that a listed subdomain aligns strictly as well;
        in A-labels, as d= carries it."""
        from_domain = from_domain.lower().rstrip(".")
        owning = [d for d in tenant.domains if from_domain == d or from_domain.endswith("." + d)]
        return a_label(max(owning, key=len) if owning else tenant.domains[0])

    def sign(self, raw: bytes, tenant: TenantSettings, domain: str) -> tuple[bytes, list[str]]:
        """Returns the DKIM-Signature header lines to prepend (CRLF-terminated) and the algorithms used."""
        headers = include_headers(raw)
        lines: list[bytes] = []
        algorithms: list[str] = []
        for key in self.keys[tenant.id]:
            try:
                line = dkim_signature(
                    raw,
                    selector=key.selector.encode(),
                    domain=domain.encode(),
                    algorithm=key.algorithm.encode(),
                    key=private_key(key.algorithm, key.private),
                    include_headers=headers,
                    timestamp=int(time.time()),
                )
            except Exception as exc:
                raise SigningError(f"{key.algorithm} signing failed: {type(exc).__name__}") from exc
            lines.append(line)
            algorithms.append(key.algorithm)
        # RFC 6376 §5.6: a new signature is prepended; the first signature listed is checked first.
        return b"".join(reversed(lines)), algorithms
