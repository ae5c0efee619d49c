"""Alembic migrations of the event store and ledger, from the first schema on (issue 6).

They ship inside the package, so `mailrelay db upgrade` and the check at start work from a wheel."""
