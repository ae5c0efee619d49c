"""The statements written for every relayed message, run on the database driver's own cursor: through
SQLAlchemy each cost ~15× the statement itself (issue 8 profile: 1.5 ms of CPU per message against 0.1)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# Written once with :name parameters (sqlite3's named style); psycopg's %(name)s is derived from it.
SAVEPOINT = "SAVEPOINT mailrelay_job"
RELEASE = "RELEASE SAVEPOINT mailrelay_job"
ROLLBACK_TO = "ROLLBACK TO SAVEPOINT mailrelay_job"

# A retry of the same copy (unique fingerprint + recipient) adds nothing: no row, no id (issue 2 §5).
INSERT_EVENT = (
    "INSERT INTO referral_events (created_at, tenant_id, token, rule_id, message_id, recipient_hash,"
    " recipient, fingerprint, next_hop_reply) VALUES (:created_at, :tenant_id, :token, :rule_id,"
    " :message_id, :recipient_hash, :recipient, :fingerprint, :next_hop_reply)"
    " ON CONFLICT (fingerprint, recipient_hash) DO NOTHING RETURNING id"
)
INSERT_DELIVERED = (
    "INSERT INTO delivered_copies (created_at, fingerprint, recipient_hash, next_hop_reply)"
    " VALUES (:created_at, :fingerprint, :recipient_hash, :next_hop_reply)"
    " ON CONFLICT (fingerprint, recipient_hash) DO NOTHING"
)
# A retried message is one rejection seen, decorated if any attempt was.
INSERT_SEEN = (
    "INSERT INTO rejections_seen (created_at, tenant_id, decorated, fingerprint)"
    " VALUES (:created_at, :tenant_id, :decorated, :fingerprint)"
    " ON CONFLICT (fingerprint) DO UPDATE SET decorated = rejections_seen.decorated OR excluded.decorated"
)
INSERT_APPLICANT = (
    "INSERT INTO referral_applicants (tenant_id, recipient_hash, counted_at)"
    " VALUES (:tenant_id, :recipient_hash, :counted_at)"
    " ON CONFLICT (tenant_id, recipient_hash) DO NOTHING RETURNING tenant_id"
)
# SQLite has no FOR UPDATE: its writer already holds the database's one write lock (BEGIN IMMEDIATE).
COUNTED_AT = {
    "postgresql": "SELECT counted_at FROM referral_applicants"
    " WHERE tenant_id = :tenant_id AND recipient_hash = :recipient_hash FOR UPDATE",
    "sqlite": "SELECT counted_at FROM referral_applicants"
    " WHERE tenant_id = :tenant_id AND recipient_hash = :recipient_hash",
}
RECOUNT = (
    "UPDATE referral_applicants SET counted_at = :counted_at"
    " WHERE tenant_id = :tenant_id AND recipient_hash = :recipient_hash"
)
INSERT_LEDGER_REFERRAL = (
    "INSERT INTO ledger_entries (created_at, tenant_id, kind, referrals, slots_used, slots_adjusted,"
    " referral_event_id) VALUES (:created_at, :tenant_id, 'referral', 1, 0, 0, :referral_event_id)"
)


def delivered_query(count: int) -> str:
    """Which of `count` recipients (:r0 …) an earlier attempt of message :fingerprint delivered."""
    wanted = ", ".join(f":r{i}" for i in range(count))
    return (
        f"SELECT recipient_hash FROM delivered_copies WHERE fingerprint = :fingerprint"
        f" AND recipient_hash IN ({wanted}) UNION ALL SELECT recipient_hash FROM referral_events"
        f" WHERE fingerprint = :fingerprint AND recipient_hash IN ({wanted})"
    )


_NAMED = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


class CursorHolder(Protocol):
    """What the driver statements take from a store Session: its `info`, which carries the Driver and the
    cursor. The SQLite writer's own connection (store/events.py, OwnConnection) is one without a Session."""

    @property
    def info(self) -> dict[Any, Any]: ...


def _pyformat(statement: str) -> str:
    return _NAMED.sub(r"%(\1)s", statement)


def _same(value: Any) -> Any:
    return value


class Driver:
    """One dialect's cursor work: its parameter style, and SQLAlchemy's own datetime conversions, so that
    rows written here are byte-identical to rows the ORM writes (SQLite stores datetimes as text)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect.name
        self._translate: Callable[[str], str] = _pyformat if dialect.paramstyle == "pyformat" else _same
        self._statements: dict[str, str] = {}
        column = DateTime(timezone=True).dialect_impl(dialect)
        self._bind_datetime: Callable[[Any], Any] = column.bind_processor(dialect) or _same
        self._read_datetime: Callable[[Any], Any] = column.result_processor(dialect, None) or _same
        self._error: type[Exception] = dialect.loaded_dbapi.Error

    @staticmethod
    def of(session: CursorHolder) -> Driver:
        """The driver of the store that made `session` (EventStore puts it in each session's info)."""
        driver: Driver | None = session.info.get("mailrelay_driver")
        if driver is None:
            assert isinstance(session, Session), "a CursorHolder other than a Session carries its driver"
            driver = session.info["mailrelay_driver"] = Driver(session.get_bind().dialect)
        return driver

    @staticmethod
    def cursor(session: CursorHolder) -> Any:
        """The driver cursor of `session`'s connection, in its transaction (one per session)."""
        cursor = session.info.get("mailrelay_cursor")
        if cursor is None:
            assert isinstance(session, Session), "a CursorHolder other than a Session carries its cursor"
            dbapi_connection = session.connection().connection.driver_connection
            assert dbapi_connection is not None
            cursor = session.info["mailrelay_cursor"] = dbapi_connection.cursor()
        return cursor

    def bind_datetime(self, moment: datetime) -> Any:
        return self._bind_datetime(moment)

    def read_datetime(self, value: Any) -> datetime:
        moment: datetime = self._read_datetime(value)
        return moment

    def execute(self, cursor: Any, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run one statement; a driver error is raised as SQLAlchemy's DBAPIError (IntegrityError, …), as
        the store's callers expect from any database failure, without the parameters in its text, as the
        store's engine raises them (hide_parameters: the text is logged, the parameters carry tokens)."""
        sql = self._statements.get(statement)
        if sql is None:
            sql = self._statements[statement] = self._translate(statement)
        try:
            cursor.execute(sql, params or {})
        except self._error as exc:
            raise DBAPIError.instance(
                sql, params, exc, self._error, hide_parameters=True, dialect=None
            ) from exc
        return cursor
