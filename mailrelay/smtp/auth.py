"""SMTP AUTH for direct submission: scrypt password file, per-client failure throttle, no secret logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from mailrelay.errors import ConfigError

log = logging.getLogger("mailrelay.smtp")

# scrypt cost: about 20 ms per check here. aiosmtpd calls the authenticator on the event loop, so it must
# stay well under the 100 ms stall budget; the failure throttle keeps guessing slow instead.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
THROTTLED = "454 4.7.0 Too many authentication failures, please try again later"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(stored: str, password: bytes) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def load_users(path: Path, config_file: str) -> dict[str, str]:
    """`user:scrypt$…` lines (made by `mailrelay passwd USER`); # comments and blank lines allowed."""
    users: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            config_file, ("smtp.auth_users_file",), f"cannot read {path}: {exc.strerror}"
        ) from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise ConfigError(
                config_file, ("smtp.auth_users_file",), f"{path} line {number}: not user:scrypt$…"
            )
        users[user] = stored
    return users


class Authenticator:
    """aiosmtpd authenticator. aiosmtpd itself refuses AUTH before STARTTLS (538) and caps AUTH commands per
    connection (command_call_limit); this adds a per-client failure throttle across connections."""

    def __init__(
        self,
        users: dict[str, str],
        max_failures: int = 5,
        window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.failures: dict[str, list[float]] = {}
        self._next_sweep = clock() + window

    def _recent_failures(self, client: str) -> list[float]:
        now = self.clock()
        if now >= self._next_sweep:
            # Clients that failed once and never came back are dropped once a window, or each address of a
            # guessing run (IPv6 gives one plenty) would stay in memory for the daemon's life.
            self._next_sweep = now + self.window
            self.failures = {c: t for c, t in self.failures.items() if t and now - t[-1] < self.window}
        recent = [t for t in self.failures.get(client, []) if now - t < self.window]
        if recent:
            self.failures[client] = recent
        else:
            self.failures.pop(client, None)
        return recent

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        client = str(session.peer[0]) if session.peer else ""
        if len(self._recent_failures(client)) >= self.max_failures:
            log.warning("AUTH refused for client [%s]: too many failures", client)
            return AuthResult(success=False, handled=False, message=THROTTLED)
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            stored = self.users.get(login)
            # Hash even for unknown users, so timing does not tell which user names exist.
            ok = verify_password(stored or _DUMMY, auth_data.password) and stored is not None
        if not ok:
            self.failures.setdefault(client, []).append(self.clock())
            # The user name may be a typo of the password: log neither (issue 5: no password in any log).
            log.warning("AUTH failed for client [%s] (%s)", client, mechanism)
            return AuthResult(success=False, handled=False)
        log.info("AUTH succeeded for client [%s]", client)
        # auth_data is kept on the session by aiosmtpd: keep the login only, never the password.
        return AuthResult(success=True, auth_data=login)


_DUMMY = hash_password(secrets.token_urlsafe(16))
