"""Every Prometheus metric of mailrelay, on an injected registry; labels come from closed sets only."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as _PrometheusCounter

from mailrelay import __version__

# `_created` series double every counter for no dashboard use.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 90.0)

# Closed label sets: a metric label never carries an address, a token or a message id.
PASS_REASONS = ("not_rejection", "shadow", "no_applicant", "protected", "already_decorated", "no_tenant")
FAIL_OPEN_STAGES = ("parse", "limits", "detect", "decorate", "sign", "timeout")
DKIM_RESULTS = ("signed", "error")
REPLY_CLASSES = ("2xx", "4xx", "5xx", "unavailable")
# The step at which the next hop was lost (transport.HopStage): MAIL and RCPT are mirrored live, so an
# unreachable next hop shows there, never at end of data.
HOP_STAGES = ("connect", "EHLO", "MAIL", "RCPT", "DATA", "RSET")
CLICK_KINDS = ("person", "scanner")
TRACKING_REFUSALS = (
    "unknown_token",
    "bad_signature",
    "malformed",
    "too_large",
    "not_configured",
    "method_not_allowed",
)
REFUSE_REASONS = (
    "client_network",
    "too_many_recipients",
    "bad_address",
    "too_many_connections",
    "too_many_from_client",
    "shutting_down",
)


class Counter(_PrometheusCounter):
    """prometheus_client's Counter, whose `labels` keeps each child it hands out by the arguments asked with.
    prometheus_client checks the label names and takes a lock on every call, ~4.5 µs, and a message asks
    four to ten times (issue 8 profile); a dict lookup costs a tenth of it. Label values come from closed
    sets and no child is ever removed, so the children kept are the ones prometheus_client keeps too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._children: dict[tuple[Any, ...], Counter] = {}
        super().__init__(*args, **kwargs)

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Counter:
        key = labelvalues or tuple(labelkwargs.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = super().labels(*labelvalues, **labelkwargs)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("mailrelay_messages_received", "Messages received (end of DATA).", registry=r)
        self.detected = Counter(
            "mailrelay_messages_detected", "Messages detected as rejections, by rule.", ["rule"], registry=r
        )
        self.rule_matches = Counter(
            "mailrelay_rule_matches", "Rule matches, by rule and mode.", ["rule", "mode"], registry=r
        )
        self.rule_vetoes = Counter(
            "mailrelay_rule_vetoes", "Rule hits vetoed, by rule.", ["rule"], registry=r
        )
        self.rule_reloads = Counter(
            "mailrelay_rule_reloads", "Rule reloads on SIGHUP, by result.", ["result"], registry=r
        )
        self.decorated = Counter(
            "mailrelay_copies_decorated", "Per-applicant copies decorated with a referral link.", registry=r
        )
        self.passed_through = Counter(
            "mailrelay_messages_passed_through",
            "Messages forwarded as the exact bytes received, by reason.",
            ["reason"],
            registry=r,
        )
        self.failed_open = Counter(
            "mailrelay_messages_failed_open",
            "Messages forwarded unmodified because detection or decoration failed, by stage.",
            ["stage"],
            registry=r,
        )
        self.dkim_signatures = Counter(
            "mailrelay_dkim_signatures",
            "DKIM signatures made, by result.",
            ["result", "algorithm"],
            registry=r,
        )
        self.next_hop_replies = Counter(
            "mailrelay_next_hop_replies",
            "Replies of the next hop to end of data, by class (unavailable: none could be had).",
            ["class"],
            registry=r,
        )
        self.next_hop_unavailable = Counter(
            "mailrelay_next_hop_unavailable",
            "Times no reply could be had from the next hop (refused, timed out, hung up, TLS failed), by the"
            " step it was lost at (connect covers the greeting and STARTTLS).",
            ["stage"],
            registry=r,
        )
        self.smtp_replies = Counter(
            "mailrelay_smtp_replies",
            "Replies mailrelay gave its clients, by command and class.",
            ["command", "class"],
            registry=r,
        )
        self.connections_refused = Counter(
            "mailrelay_connections_refused", "Commands refused by policy, by reason.", ["reason"], registry=r
        )
        self.referral_events = Counter(
            "mailrelay_referral_events", "Referral events recorded, by tenant.", ["tenant"], registry=r
        )
        self.clicks = Counter(
            "mailrelay_link_clicks",
            "Requests for /r/<token> of a known token, by tenant and kind (scanner: flagged, not a person).",
            ["tenant", "kind"],
            registry=r,
        )
        self.registrations = Counter(
            "mailrelay_registrations",
            "Applicants registered with the referral service (signed webhook, first delivery), by tenant.",
            ["tenant"],
            registry=r,
        )
        self.tracking_refused = Counter(
            "mailrelay_tracking_refused",
            "Click or webhook requests refused (404, 401, 400, 405, 413; 503 not_configured: no webhook"
            " secret), by reason.",
            ["reason"],
            registry=r,
        )
        self.event_store_errors = Counter(
            "mailrelay_event_store_errors", "Failed writes or reads of the event store.", registry=r
        )
        self.internal_errors = Counter(
            "mailrelay_internal_errors",
            "Transactions ended with 451 because of a fault in mailrelay.",
            registry=r,
        )
        self.processing_seconds = Histogram(
            "mailrelay_processing_duration_seconds",
            "Parsing, detection, decoration and signing of one message.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.forwarding_seconds = Histogram(
            "mailrelay_forwarding_duration_seconds",
            "Forwarding all copies of one message to the next hop, end of data to last reply.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recording_seconds = Histogram(
            "mailrelay_recording_duration_seconds",
            "Recording one message's referral events durably (group commit: the wait for the batch, and"
            " up to 4 ms for other rejections already on their way to the next hop, its statements and"
            " fsync), after the next hop accepted and before the client's reply.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.journal_backlog = Gauge(
            "mailrelay_journal_backlog",
            "Delivered copies whose records wait in the local journal for the database to come back.",
            registry=r,
        )
        self.active_sessions = Gauge("mailrelay_active_sessions", "Open SMTP client sessions.", registry=r)
        self.build_info = Gauge("mailrelay_build_info", "Version of mailrelay.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

    def prime(self, rule_ids: tuple[str, ...], tenant_ids: tuple[str, ...]) -> None:
        """Create every labelled series at 0, so rate() and alerts see them before the first event."""
        for result in ("success", "failure"):
            self.rule_reloads.labels(result=result)
        for reason in PASS_REASONS:
            self.passed_through.labels(reason=reason)
        for stage in FAIL_OPEN_STAGES:
            self.failed_open.labels(stage=stage)
        for cls in REPLY_CLASSES:
            self.next_hop_replies.labels(**{"class": cls})
        for stage in HOP_STAGES:
            self.next_hop_unavailable.labels(stage=stage)
        for reason in REFUSE_REASONS:
            self.connections_refused.labels(reason=reason)
        for rule in rule_ids:
            self.detected.labels(rule=rule)
        for reason in TRACKING_REFUSALS:
            self.tracking_refused.labels(reason=reason)
        for tenant in tenant_ids:
            self.referral_events.labels(tenant=tenant)
            self.registrations.labels(tenant=tenant)
            for kind in CLICK_KINDS:
                self.clicks.labels(tenant=tenant, kind=kind)
