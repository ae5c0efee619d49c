"""Every reply mailrelay words itself, by name; and the mapping of typed outcomes to reply lines."""

from __future__ import annotations

from mailrelay.relay import (
    CommandOutcome,
    DataOutcome,
    Mirrored,
    PartlyDelivered,
    Unavailable,
    Unsupported,
)
from mailrelay.transport import Reply

OK = "250 2.0.0 Ok"
RELAY_DENIED = "554 5.7.1 Relay access denied"  # RFC 5321 §3.6.2; a client outside smtp.client_networks
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"  # RFC 5321 §4.5.3.1.10: 452, not 552
BAD_ADDRESS = "501 5.1.3 Bad address syntax"
BAD_SENDER_ADDRESS = "501 5.1.7 Bad sender address syntax"
SMTPUTF8_UNSUPPORTED = "553 5.6.7 SMTPUTF8 is not supported by the next hop"  # RFC 6531 §3.7.4
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"  # RFC 4954 §4
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"  # RFC 4954 §6
# Our own faults: generic text only, never exception text, hosts or secrets (Postfix: "It would not be
# right to disclose internal details to strangers"). 4xx so that the sender keeps the mail and retries.
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, please try again later"
NEXT_HOP_UNAVAILABLE = "451 4.4.1 Next hop not available, please try again later"
PARTLY_DELIVERED = "451 4.3.0 Not every recipient could be delivered yet; please retry (no duplicates)"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, please try again later"
TOO_MANY_CONNECTIONS_FROM_CLIENT = "421 4.7.0 Too many connections from your address, please try again later"


def mirror(reply: Reply) -> str:
    """The next hop's reply as ours: its code and its text, on one line."""
    return f"{reply.code} {reply.one_line()}".rstrip()


def for_command(outcome: CommandOutcome) -> str:
    match outcome:
        case Mirrored(reply):
            return mirror(reply)
        case Unavailable():
            return NEXT_HOP_UNAVAILABLE
        case Unsupported():
            return SMTPUTF8_UNSUPPORTED


def for_data(outcome: DataOutcome) -> str:
    match outcome:
        case Mirrored(reply):
            return mirror(reply)
        case Unavailable():
            return NEXT_HOP_UNAVAILABLE
        case PartlyDelivered():
            return PARTLY_DELIVERED


def reply_class(reply: str) -> str:
    return f"{reply[:1]}xx"
