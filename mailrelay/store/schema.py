"""The schema version: Alembic upgrades, and the check at start that refuses a database newer than us."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

# The revision that the tables made by `create_all` before issue 6 correspond to.
LEGACY_REVISION = "0001"
# Any constant: every relay that upgrades a PostgreSQL schema takes this lock first, so relays started
# together on an empty database do not race to create the same tables.
_PG_LOCK = 0x6D61696C  # "mail"


class SchemaError(Exception):
    """The database schema cannot be used by this version of mailrelay; the relay refuses to start."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("mailrelay") / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    assert len(heads) == 1, f"the migrations must form one line, not {heads}"
    return heads[0]


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})


def current_revision(engine: Engine) -> str | None:
    """The database's revision; a pre-issue-6 database (tables, no alembic_version) reads as 0001."""
    with engine.connect() as connection:
        revision = _current(connection)
        if revision is None and inspect(connection).has_table("referral_events"):
            return LEGACY_REVISION
        return revision


def upgrade(engine: Engine, target: str = "head") -> None:
    """Bring the schema to `target` in one transaction (DDL is transactional on PostgreSQL and SQLite)."""
    with engine.begin() as connection:
        _lock(connection)
        if _current(connection) is None and inspect(connection).has_table("referral_events"):
            command.stamp(_config(connection), LEGACY_REVISION)
        command.upgrade(_config(connection), target)


def check_at_start(engine: Engine, *, upgrade_older: bool) -> str:
    """What the relay does at start: an empty database is upgraded (the embedded defaults need no extra
    step); a newer one is refused; an older one is upgraded only when `upgrade_older` (SQLite: this relay
    owns the file), otherwise refused with the command to run. Returns what was done, for the log."""
    current = current_revision(engine)
    latest = head()
    if current == latest:
        return f"schema at {latest}"
    if current is None:
        upgrade(engine)
        return f"empty database: schema created at {latest}"
    if current not in known_revisions():
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this mailrelay knows "
            f"(latest {latest}): run the newer mailrelay, or restore a matching database"
        )
    if not upgrade_older:
        raise SchemaError(
            f"the database schema is at revision {current}, older than {latest}: "
            "run `mailrelay db upgrade` once (other relays on this database must then be updated too)"
        )
    upgrade(engine)
    return f"schema upgraded from {current} to {latest}"
