"""DKIM checks by a verifier we did not write: Perl's Mail::DKIM (tests/tools/dkim_verify.pl), DNS stubbed."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

VERIFIER = Path(__file__).resolve().parent.parent / "tools" / "dkim_verify.pl"

# Which Debian package to name when a tool is missing: a missing verifier must fail the test, never skip it.
PERL_PACKAGES = "libmail-dkim-perl libnet-dns-perl libcryptx-perl"


class ToolMissing(RuntimeError):
    """A test tool is not installed; the message names the Debian package (scripts/bootstrap installs it)."""


@dataclass
class DkimResult:
    passed: bool
    # One dict per signature: domain, selector, algorithm, result ("pass", "fail", "invalid", …), detail.
    signatures: list[dict[str, Any]] = field(default_factory=list)
    # The verifier's final line: {"result": "pass" | "fail" | "none", …}.
    summary: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    def __str__(self) -> str:  # what pytest shows on `assert result.passed, result`
        return self.output or repr(self)


def verify_dkim(
    message: bytes,
    keys: dict[str, str],
    require_domain: str | None = None,
    *,
    lf_to_crlf: bool = False,
) -> DkimResult:
    """Verify every DKIM signature in `message` against `keys` ({"sel._domainkey.example.com": TXT text}).

    `passed` is True only if there is at least one signature, all pass, and (with `require_domain`) one
    passing signature is by that domain. The bytes are verified as given (Mail::DKIM needs CRLF line
    ends, as on the wire); `lf_to_crlf` converts bare LF first, as an SMTP client would.
    """
    perl = shutil.which("perl")
    if perl is None:
        raise ToolMissing("perl is not installed (Debian package perl-base); run scripts/bootstrap")
    for name, text in keys.items():
        if any(c in name for c in " \t\r\n") or "\n" in text or "\r" in text:
            raise ValueError(f"key record {name!r} cannot be written as one line")
    with tempfile.NamedTemporaryFile("w", suffix=".keys", encoding="utf-8") as keyfile:
        keyfile.write("".join(f"{name} {text}\n" for name, text in keys.items()))
        keyfile.flush()
        args = [perl, str(VERIFIER), "--keys", keyfile.name]
        if require_domain is not None:
            args += ["--require-domain", require_domain]
        if lf_to_crlf:
            args.append("--lf-to-crlf")
        proc = subprocess.run(args, input=message, capture_output=True, timeout=60, check=False)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode not in (0, 1):
        if "Can't locate" in stderr:
            raise ToolMissing(
                f"dkim_verify.pl cannot load its Perl modules (Debian packages {PERL_PACKAGES}): {stderr}"
            )
        raise RuntimeError(f"dkim_verify.pl failed with exit {proc.returncode}: {stderr}")
    stdout = proc.stdout.decode("utf-8")
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if not lines or "domain" in lines[-1]:
        raise RuntimeError(f"dkim_verify.pl gave no summary line: {stdout!r} {stderr}")
    return DkimResult(
        passed=proc.returncode == 0,
        signatures=lines[:-1],
        summary=lines[-1],
        output=stdout + stderr,
    )


def txt_record(public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The DKIM TXT record text for a public key (RFC 6376 §3.6.1; RFC 8463 §4 for Ed25519)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def make_rsa_key(tmp_path: Path, bits: int = 2048, name: str = "rsa.key") -> tuple[Path, str]:
    """A new RSA key as PEM (PKCS#1, what dkimpy and OpenDKIM read) and its TXT record text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path, txt_record(key.public_key())


def make_ed25519_key(tmp_path: Path, name: str = "ed25519.key") -> tuple[Path, str]:
    """A new Ed25519 key in dkimpy's format (base64 of the raw 32-byte seed) and its TXT record text."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / name
    path.write_bytes(base64.b64encode(seed) + b"\n")
    return path, txt_record(key.public_key())
