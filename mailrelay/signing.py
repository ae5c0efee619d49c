"""DKIM keys (load, check, make) and signing with dkimpy over the exact bytes that go on the wire."""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import dkim.canonicalization
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mailrelay.config import DkimKeySettings, TenantSettings
from mailrelay.errors import ConfigError

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

log = logging.getLogger("mailrelay.dkim")

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def _use_openssl_rsa() -> None:
    """dkimpy computes RSA in pure Python (about 15 ms per RSA-2048 signature, issue 8). Route that one call,
    and the parsing of the PEM key it repeats on every signature, through OpenSSL via `cryptography`
    (about 0.5 ms); canonicalisation, header selection and the tag list stay dkimpy's own. The result is
    checked by an independent verifier (Perl's Mail::DKIM) in the tests."""
    keys: dict[int, rsa.RSAPrivateKey] = {}
    digests = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}

    def rsassa_pkcs1_v1_5_sign(hash_obj: Any, private_key: dict[str, int]) -> bytes:
        key = keys.get(private_key["modulus"])
        if key is None:
            key = rsa.RSAPrivateNumbers(
                p=private_key["prime1"],
                q=private_key["prime2"],
                d=private_key["privateExponent"],
                dmp1=private_key["exponent1"],
                dmq1=private_key["exponent2"],
                iqmp=private_key["coefficient"],
                public_numbers=rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"]),
            ).private_key()
            keys[private_key["modulus"]] = key
        algorithm = digests[hash_obj.name.lower()]
        return key.sign(hash_obj.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))

    dkim.parse_pem_private_key = functools.lru_cache(maxsize=64)(dkim.parse_pem_private_key)
    dkim.RSASSA_PKCS1_v1_5_sign = rsassa_pkcs1_v1_5_sign


_use_openssl_rsa()

_dkimpy_rfc822_parse: Callable[[bytes], tuple[list[list[bytes]], bytes]] = dkim.rfc822_parse
_dkimpy_relaxed_body: Callable[[bytes], bytes] = dkim.canonicalization.Relaxed.canonicalize_body

# Large enough that a 5 KB or 50 KB message takes dkimpy's own path unchanged.
BODY_CHUNK_BYTES = 256 * 1024


def relaxed_body(body: bytes, chunk_bytes: int = BODY_CHUNK_BYTES) -> bytes:
    """dkimpy's relaxed body canonicalisation (RFC 6376 §3.4.4), a chunk of whole lines at a time.

    Both of its substitutions stay within a line, so applying them to chunks that end after a CRLF gives
    the same bytes as applying them to the whole body; the end-of-body rules then run once on the result.
    """
    canon = dkim.canonicalization
    if b"\t" not in body and b"  " not in body and b" \r\n" not in body:
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


def split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse, splitting only the header block into lines when the message has CRLF line
    endings only (as every message we sign has: relay.normalize_line_endings); the same result."""
    blank = 0 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n") + 2
    if blank == 1 or message.count(b"\n") != message.count(b"\r\n"):
        return _dkimpy_rfc822_parse(message)  # no empty line, or bare LFs: dkimpy's own path
    headers, _ = _dkimpy_rfc822_parse(message[: blank + 2])
    return headers, message[blank + 2 :]


def _chunked_body_paths() -> None:
    """dkimpy splits the whole message into lines (rfc822_parse) and runs two regexes over the whole body
    (relaxed canonicalisation). For a 27 MB message those are three C calls of 300-380 ms, each holding the
    GIL: the signing thread is off the event loop, but the loop cannot run while it waits for the GIL, and
    every other session stalls (issue 5, scripts/reliability "stall"). The replacements return the same
    values (tests/test_signing_chunks.py) in calls short enough for the loop to get its turn in between."""
    dkim.rfc822_parse = split_message
    dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed_body)


_chunked_body_paths()


class SigningError(Exception):
    """The copy cannot be signed (key unusable); the relay forwards the original instead."""


@dataclass(frozen=True)
class LoadedKey:
    selector: str
    algorithm: str
    private: bytes  # what dkimpy takes: PEM for RSA, base64 of the 32-byte seed for Ed25519


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
    return names


def check_key_file(settings: DkimKeySettings, file: str) -> None:
    """Refuse a key others can read: a DKIM key lets anyone send as the company."""
    try:
        mode = settings.key_file.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigError(file, ("tenants.dkim.key_file",), f"{settings.key_file} does not exist") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            file,
            ("tenants.dkim.key_file",),
            f"{settings.key_file} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it",
        )


def load_key(settings: DkimKeySettings, file: str) -> LoadedKey:
    if settings.create_if_missing and not settings.key_file.exists():
        txt = make_key_pair(settings.key_file, settings.algorithm)
        log.warning(
            "made demo DKIM key %s; its DNS TXT record at %s._domainkey.<domain>: %s",
            settings.key_file,
            settings.selector,
            txt,
        )
    check_key_file(settings, file)
    data = settings.key_file.read_bytes()
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
    except ValueError as exc:
        # The exception text of a key parser may quote key material: never put it in a message.
        raise ConfigError(
            file, ("tenants.dkim.key_file",), f"{settings.key_file} is not a usable {settings.algorithm} key"
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


def public_txt(settings: DkimKeySettings) -> str:
    """The TXT record value for an existing private key."""
    data = settings.key_file.read_bytes()
    if settings.algorithm == "rsa-sha256":
        key = serialization.load_pem_private_key(data, password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    seed = base64.b64decode(data.strip())
    raw = (
        ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
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
    published = published_txt(f"{selector}._domainkey.{domain}")
    if published is None:
        return "unreachable"
    if not published:
        return "missing"
    return "matches" if any(_p_tag(value) == _p_tag(txt) for value in published) else "differs"


def dns_record(selector: str, domain: str, txt: str) -> str:
    """A zone-file line; TXT strings are split at 255 octets (RFC 1035 §3.3.14)."""
    chunks = " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"


class DkimSigner:
    """Signs a copy for its tenant with every configured key: relaxed/relaxed, no l=, over-signed headers."""

    def __init__(self, tenants: tuple[TenantSettings, ...], config_file: str) -> None:
        self.keys: dict[str, tuple[LoadedKey, ...]] = {
            t.id: tuple(load_key(k, config_file) for k in t.dkim) for t in tenants
        }

    def signing_domain(self, tenant: TenantSettings, from_domain: str) -> str:
        """d= is the tenant domain the From address belongs to, so DMARC aligns (RFC 7489 §3.1.1)."""
        from_domain = from_domain.lower().rstrip(".")
        for domain in tenant.domains:
            if from_domain == domain or from_domain.endswith("." + domain):
                return domain
        return tenant.domains[0]

    def sign(self, raw: bytes, tenant: TenantSettings, domain: str) -> tuple[bytes, list[str]]:
        """Returns the DKIM-Signature header lines to prepend (CRLF-terminated) and the algorithms used."""
        headers = include_headers(raw)
        lines: list[bytes] = []
        algorithms: list[str] = []
        for key in self.keys[tenant.id]:
            try:
                line = dkim.sign(
                    raw,
                    key.selector.encode(),
                    domain.encode(),
                    key.private,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=headers,
                    length=False,  # RFC 6376 §8.2: l= lets anyone append content under our signature.
                    signature_algorithm=key.algorithm.encode(),
                    linesep=b"\r\n",
                )
            except Exception as exc:
                raise SigningError(f"{key.algorithm} signing failed: {type(exc).__name__}") from exc
            lines.append(line if line.endswith(b"\r\n") else line + b"\r\n")
            algorithms.append(key.algorithm)
        # RFC 6376 §5.6: a new signature is prepended; the first signature listed is checked first.
        return b"".join(reversed(lines)), algorithms
