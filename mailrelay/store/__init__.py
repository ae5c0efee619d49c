"""The referral-event store and ledger: SQLAlchemy models, migrations check, the writer the relay calls off
the event loop, and the ledger, tracking and retention logic (issue 6)."""

from mailrelay.store.events import (
    DEFAULT_DEDUPE_WINDOW,
    CopyRecord,
    EventStore,
    ExpectedWrite,
    ReferralFields,
    SeenRejection,
)
from mailrelay.store.ledger import Balance, LedgerError, LedgerLine
from mailrelay.store.models import DeliveredCopy, LedgerEntry, ReferralEvent
from mailrelay.store.schema import SchemaError

__all__ = [
    "DEFAULT_DEDUPE_WINDOW",
    "Balance",
    "CopyRecord",
    "DeliveredCopy",
    "EventStore",
    "ExpectedWrite",
    "LedgerEntry",
    "LedgerError",
    "LedgerLine",
    "ReferralEvent",
    "ReferralFields",
    "SchemaError",
    "SeenRejection",
]
