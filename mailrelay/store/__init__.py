"""The referral-event store: SQLAlchemy models and the writer the relay calls off the event loop."""

from mailrelay.store.events import CopyRecord, EventStore, ReferralFields
from mailrelay.store.models import DeliveredCopy, ReferralEvent

__all__ = ["CopyRecord", "DeliveredCopy", "EventStore", "ReferralEvent", "ReferralFields"]
