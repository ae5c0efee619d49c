"""One client session's transactions: mirror MAIL and RCPT to the next hop, then parse → detect →
per-applicant copies → pipeline → forward → record, returning typed outcomes (smtp/ words the replies)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Literal

from mailrelay.config import Settings, TenantSettings
from mailrelay.detection import DetectionInput, RuleSet, Verdict
from mailrelay.journal import EventJournal
from mailrelay.message import (
    LimitExceeded,
    Limits,
    MessageText,
    MimeError,
    ParsedMessage,
    WireReady,
    crlf_only,
    parse,
)
from mailrelay.metrics import Metrics
from mailrelay.signing import SigningError
from mailrelay.stages import Copy, Stage
from mailrelay.stages.mark import MARKER_HEADER
from mailrelay.store import CopyRecord, EventStore, ExpectedWrite, ReferralFields, SeenRejection
from mailrelay.transport import HopConnection, NextHop, NextHopUnavailable, Reply

log = logging.getLogger("mailrelay.relay")


# ---- typed outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirrored:
    """The next hop's own reply to a command, to be passed on as it is."""

    reply: Reply


@dataclass(frozen=True)
class Unavailable:
    """No reply could be had from the next hop (down, timeout, hang-up, TLS): the sender must retry."""

    kind: str
    what: str = ""  # what happened where, for the log (NextHopUnavailable.what); never for the reply


@dataclass(frozen=True)
class Unsupported:
    """The next hop lacks an extension this transaction needs (SMTPUTF8)."""

    extension: str


@dataclass(frozen=True)
class PartlyDelivered:
    """Some copies were accepted, others deferred or refused: the sender retries; delivered copies are
    remembered and not sent again."""


# A fault in mailrelay itself is not an outcome: it is an exception, which smtp/ answers with 451 4.3.0.
CommandOutcome = Mirrored | Unavailable | Unsupported
DataOutcome = Mirrored | Unavailable | PartlyDelivered


# ---- planning: what goes to whom ------------------------------------------------------------------------


@dataclass
class Group:
    """One downstream transaction: these recipients get these bytes."""

    recipients: list[str]
    content: bytes
    copy: Copy | None = None  # set for a decorated applicant copy


@dataclass
class Plan:
    groups: list[Group]
    decision: str  # "decorated", or the pass-through/fail-open reason, for logs
    verdict: Verdict | None = None
    tenant_id: str | None = None  # the tenant the mail was attributed to, once known


def _counted(plan: Plan) -> bool:
    """A rejection of a known tenant: the store counts it (the follow-up rate's denominator), whatever
    becomes of its delivery, so each one writes once its next-hop transaction is over."""
    return plan.verdict is not None and plan.verdict.rejection and plan.tenant_id is not None


PassReason = Literal["not_rejection", "shadow", "no_applicant", "protected", "already_decorated", "no_tenant"]


# Messages up to this size are planned on the event loop: typical HR mail takes 0.3–3 ms, less than the
# GIL hand-offs of a thread hop (issue 8 profile), and the pre-scan caps bound the worst case to tens of
# milliseconds. Larger ones go to a worker thread under processing.time_budget, so other sessions are
# served meanwhile (issue 3, "Bounded").
INLINE_PLAN_BYTES = 64 * 1024

_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def normalize_line_endings(content: bytes) -> bytes:
    """Bare CR and bare LF become CRLF (RFC 5321 §2.3.8), like Postfix's smtpd_forbid_bare_newline =
    normalize. aiosmtplib would do the same on the wire; doing it first means that what we detect on, sign
    and fingerprint is exactly what the next hop receives, and no bare newline ever reaches it."""
    if type(content) is WireReady:
        return content  # smtp/data.py saw every line end in CRLF while reading it
    if crlf_only(content):
        return content
    return _BARE_NEWLINE.sub(b"\r\n", content)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


# An address field as mail clients write it: a bare addr-spec, or a display name of atoms and encoded words
# and one <addr-spec>. Anything else (quoted names, comments, groups, several mailboxes, domain literals)
# goes to email.utils.getaddresses, which costs ~17 µs a call (issue 8 profile). The classes leave out
# RFC 5322 §3.2.3's specials, but for the period in a display name (obs-phrase).
_DISPLAY_NAME = r'[^<>@,;:"()\\\[\]]*'
_ADDR_SPEC = r'[^<>@,;:"()\\\[\]\s]+@[^<>@,;:"()\\\[\]\s]+'
_SIMPLE_MAILBOX = re.compile(rf"\s*({_ADDR_SPEC})\s*|{_DISPLAY_NAME}<({_ADDR_SPEC})>\s*")


def first_address(values: list[str]) -> str:
    """The first address with an @ in `values`, as getaddresses finds it, or "". The values are read
    undecoded (ParsedMessage.address_header_values)."""
    for value in values:
        simple = _SIMPLE_MAILBOX.fullmatch(value)
        if simple:
            return simple.group(1) or simple.group(2)
        for _name, address in getaddresses([value]):
            if "@" in address:
                return address
    return ""


def mask(address: str) -> str:
    """Applicant addresses never reach logs in clear (issue 5): keep the first letter and the domain."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


@dataclass
class Transaction:
    txn_id: str
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    content: bytes
    fingerprint: str = field(default="")


class Relay:
    """Everything one relay instance shares between sessions: settings, rules, pipeline, store, next hop."""

    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        pipeline: list[tuple[str, Stage]],
        store: EventStore,
        next_hop: NextHop,
        metrics: Metrics,
        hash_key: bytes,
        journal: EventJournal,
    ) -> None:
        self.journal = journal
        self.store_paused_until = 0.0
        self.settings = settings
        self.rules = rules
        self.pipeline = pipeline
        self.store = store
        self.next_hop = next_hop
        self.metrics = metrics
        # Keyed once; each address hashes on a copy (the same digest as hmac.digest). The one-shot
        # hmac.digest releases the GIL around OpenSSL's HMAC even for a few bytes, and on the event loop
        # each release let the store's writer thread in, whose turn the loop then waited out (issue 8,
        # cProfile of one process: 23.5 µs a call in a rejection's run, 3 µs alone); an update of fewer
        # than 2 KiB keeps the GIL.
        self._recipient_mac = hmac.new(hash_key, digestmod=hashlib.sha256)

    # Derived from the settings each time: a SIGHUP reload replaces `settings` (app.reload_rules).
    @property
    def link_prefixes(self) -> list[str]:
        """Our links, in either link mode: a text that already carries one was decorated before."""
        prefixes = [self.settings.referral.base_url]
        if self.settings.http.public_url:
            prefixes.append(self.settings.http.public_url.rstrip("/") + "/r/")
        return prefixes

    @property
    def limits(self) -> Limits:
        p = self.settings.processing
        return Limits(max_parts=p.max_parts, max_depth=p.max_depth, max_header_bytes=p.max_header_bytes)

    # After a failure the database is left alone for this long: messages go straight to the journal instead
    # of each waiting out a lock or a connect timeout on the one database thread (issue 5: mail keeps
    # flowing). A successful journal replay ends the pause early.
    STORE_PAUSE_SECONDS = 5.0

    def store_usable(self) -> bool:
        return time.monotonic() >= self.store_paused_until

    def store_failed(self, txn_id: str, doing: str, exc: Exception) -> None:
        log.warning("%s: event store unavailable while %s (%s)", txn_id, doing, type(exc).__name__)
        self.metrics.event_store_errors.inc()
        self.store_paused_until = time.monotonic() + self.STORE_PAUSE_SECONDS

    def store_back(self) -> None:
        self.store_paused_until = 0.0

    def recipient_hash(self, address: str) -> str:
        mac = self._recipient_mac.copy()
        mac.update(address.lower().encode("utf-8"))
        return mac.hexdigest()

    def is_internal(self, address: str, tenant: TenantSettings) -> bool:
        domain = domain_of(address)
        return tenant.owns(domain) or any(
            domain == d or domain.endswith("." + d) for d in self.settings.internal_domains
        )

    def tenant_for(self, parsed: ParsedMessage, mail_from: str) -> tuple[TenantSettings | None, str]:
        """The tenant owning the From domain, else the envelope sender's; and the From domain to sign for."""
        address = first_address(parsed.address_header_values("From"))
        from_domain = domain_of(address) if address else ""
        tenant = self.settings.tenant_for_domain(from_domain) if from_domain else None
        if tenant is None:
            tenant = self.settings.tenant_for_domain(domain_of(mail_from))
            if tenant is not None and not from_domain:
                from_domain = domain_of(mail_from)
        return tenant, from_domain

    def detect(
        self,
        parsed: ParsedMessage,
        text: MessageText,
        sender: str,
        tenant_id: str | None,
        *,
        explain: bool = False,
    ) -> Verdict:
        """The rules' verdict on one message; `mailrelay check` asks the same question the same way."""
        return self.rules.evaluate(
            DetectionInput(
                subject=text.subject,
                plain=text.plain,
                html=text.html,
                header=parsed.header_values,
                sender=sender,
                tenant=tenant_id,
            ),
            explain=explain,
        )

    def new_session(self, peer: str) -> RelaySession:
        return RelaySession(self, peer)

    # Pure CPU work on one message, no I/O: on the event loop, or in a worker thread for a large one.
    def plan(
        self,
        txn: Transaction,
        on_pass: Callable[[str], None],
        on_decorating: Callable[[], None] | None = None,
    ) -> Plan:
        """What goes to whom. Never raises: whatever fails, the original goes to everyone (issue 2 §6).
        `on_decorating` is called once the message is known to be decorated, before the copies are made."""
        current = ["parse"]  # the step under way, for the fail-open metric
        try:
            return self._plan(txn, on_pass, current, on_decorating)
        except Exception:
            log.exception("%s: %s failed; forwarding the original", txn.txn_id, current[0])
            self.metrics.failed_open.labels(stage=current[0]).inc()
            return Plan([Group(list(txn.rcpt_tos), txn.content)], f"failed-open:{current[0]}")

    def _plan(
        self,
        txn: Transaction,
        on_pass: Callable[[str], None],
        current: list[str],
        on_decorating: Callable[[], None] | None,
    ) -> Plan:
        everyone = [Group(list(txn.rcpt_tos), txn.content)]

        tenant: TenantSettings | None = None

        def passthrough(reason: PassReason, verdict: Verdict | None = None) -> Plan:
            on_pass(reason)
            return Plan(everyone, reason, verdict, tenant.id if tenant else None)

        try:
            parsed = parse(txn.content, self.limits)
        except MimeError as exc:
            failed = "limits" if isinstance(exc, LimitExceeded) else "parse"
            self.metrics.failed_open.labels(stage=failed).inc()
            return Plan(everyone, f"failed-open:{failed}:{exc.reason}")
        if parsed.header_values(MARKER_HEADER):
            return passthrough("already_decorated")
        tenant, from_domain = self.tenant_for(parsed, txn.mail_from)
        if tenant is None:
            return passthrough("no_tenant")

        current[0] = "detect"
        text = parsed.text()
        if any(prefix in text.plain or prefix in text.html for prefix in self.link_prefixes):
            # A reply quoting an earlier footer: one link per thread is enough (issue 3, idempotent).
            return passthrough("already_decorated")
        verdict = self.detect(parsed, text, txn.mail_from, tenant.id)

        for rule_id in verdict.shadow:
            self.metrics.rule_matches.labels(rule=rule_id, mode="shadow").inc()
        for rule_id, _phrase in verdict.vetoed:
            self.metrics.rule_vetoes.labels(rule=rule_id).inc()
        if not verdict.rejection or verdict.rule is None or verdict.footer is None:
            return passthrough("shadow" if verdict.shadow else "not_rejection", verdict)
        self.metrics.detected.labels(rule=verdict.rule).inc()
        self.metrics.rule_matches.labels(rule=verdict.rule, mode="decorate").inc()

        # A recipient given twice gets one copy (and one link), as the next hop would make of one
        # transaction (Postfix's cleanup drops duplicate recipients); each copy is a transaction of its own.
        applicants = list(dict.fromkeys(r for r in txn.rcpt_tos if not self.is_internal(r, tenant)))
        if not applicants:
            return passthrough("no_applicant", verdict)
        if parsed.protected:
            return passthrough("protected", verdict)

        current[0] = "decorate"
        if on_decorating is not None:
            on_decorating()
        groups: list[Group] = []
        internal = [r for r in txn.rcpt_tos if r not in applicants]
        if internal:
            groups.append(Group(internal, txn.content))
        stage_name = "decorate"
        try:
            for recipient in applicants:
                copy = Copy(
                    recipient=recipient,
                    tenant=tenant,
                    rule_id=verdict.rule,
                    footer_name=verdict.footer,
                    from_domain=from_domain,
                    parsed=parsed,
                    raw=txn.content,
                )
                for stage_name, stage in self.pipeline:  # noqa: B007 (named in the except below)
                    stage(copy)
                groups.append(Group([recipient], copy.raw, copy))
        except SigningError as exc:
            # Mail first: a copy we cannot sign is not sent decorated; the original goes to everyone.
            log.error("%s: DKIM signing failed (%s); forwarding the original", txn.txn_id, exc)
            for algorithm in (k.algorithm for k in tenant.dkim):
                self.metrics.dkim_signatures.labels(result="error", algorithm=algorithm).inc()
            self.metrics.failed_open.labels(stage="sign").inc()
            return Plan(everyone, "failed-open:sign", verdict)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, MimeError) else type(exc).__name__
            if not isinstance(exc, MimeError):
                log.exception("%s: stage %s failed; forwarding the original", txn.txn_id, stage_name)
            self.metrics.failed_open.labels(stage="decorate").inc()
            return Plan(everyone, f"failed-open:{stage_name}:{reason}", verdict)
        return Plan(groups, "decorated", verdict, tenant.id)


def _defer_unanswered(groups: list[Group], results: list[GroupResult]) -> None:
    """After the transaction's time ran out: each recipient the next hop has not answered for is deferred,
    with no reply, in the group it was sent in, and the groups not yet tried with it."""
    for result in results:
        answered = {*result.delivered, *(r for r, _ in result.deferred), *(r for r, _ in result.refused)}
        result.deferred.extend((r, None) for r in result.group.recipients if r not in answered)
    tried = {id(result.group) for result in results}
    results.extend(
        GroupResult(g, deferred=[(r, None) for r in g.recipients]) for g in groups if id(g) not in tried
    )


@dataclass(frozen=True)
class StoreRead:
    """The retry check under way: which recipients were asked about, what the journal held just before the
    store was asked, and the store's answer (hashes)."""

    recipients: frozenset[str]
    journalled: set[str]
    answer: asyncio.Future[set[str]]

    def abandon(self) -> None:
        """Not waited for after all: its outcome, a failure included, is dropped when it arrives."""
        self.answer.add_done_callback(_drop_outcome)


def _drop_outcome(future: asyncio.Future[set[str]]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


@dataclass
class GroupResult:
    group: Group
    delivered: list[str] = field(default_factory=list)
    deferred: list[tuple[str, Reply | None]] = field(default_factory=list)  # None: no reply could be had
    refused: list[tuple[str, Reply]] = field(default_factory=list)
    data_reply: Reply | None = None


class RelaySession:
    """One client connection: it owns at most one connection to the next hop, reused across transactions."""

    def __init__(self, relay: Relay, peer: str) -> None:
        self.relay = relay
        self.peer = peer
        self.conn: HopConnection | None = None
        self.in_transaction = False
        self.accepted: list[str] = []
        self.in_flight: asyncio.Task[DataOutcome] | None = None

    async def _connection(self) -> HopConnection:
        if self.conn is None or not self.conn.alive:
            self.conn = await self.relay.next_hop.connect()
            self.in_transaction = False
        return self.conn

    async def mail(self, sender: str, options: list[str]) -> CommandOutcome:
        """MAIL is passed to the next hop at once, so its verdict on the sender reaches the client live."""
        try:
            conn = await self._connection()
            if self.in_transaction:
                await conn.rset()
                self.in_transaction = False
            wanted = self._mail_options(conn, options)
            if isinstance(wanted, Unsupported):
                return wanted
            reply = await conn.mail(sender, wanted)
        except NextHopUnavailable as exc:
            self._lost(exc)
            return Unavailable(exc.kind, exc.what)
        self.in_transaction = reply.ok
        self.accepted = []
        return Mirrored(reply)

    @staticmethod
    def _mail_options(conn: HopConnection, options: list[str]) -> list[str] | Unsupported:
        wanted: list[str] = []
        for option in options:
            keyword = option.split("=", 1)[0].upper()
            if keyword == "SMTPUTF8":
                # RFC 6531 §3.4: never downgrade an SMTPUTF8 transaction silently.
                if not conn.supports("smtputf8"):
                    return Unsupported("SMTPUTF8")
                wanted.append("SMTPUTF8")
            elif (keyword == "BODY" and conn.supports("8bitmime")) or (
                keyword == "SIZE" and conn.supports("size")
            ):
                wanted.append(option.upper())
        return wanted

    async def rcpt(self, recipient: str) -> CommandOutcome:
        """RCPT is mirrored live (Postfix smtpd_proxy_filter semantics): a recipient the next hop refuses is
        refused to the client now, so no recipient is ever accepted and then silently dropped."""
        if self.conn is None or not self.in_transaction:
            return Unavailable("disconnect", "disconnect at RCPT: connection already lost")
        try:
            reply = await self.conn.rcpt(recipient)
        except NextHopUnavailable as exc:
            self._lost(exc)
            return Unavailable(exc.kind, exc.what)
        if reply.ok:
            self.accepted.append(recipient)
        return Mirrored(reply)

    async def reset(self) -> None:
        if self.conn is not None and self.in_transaction:
            try:
                await self.conn.rset()
            except NextHopUnavailable as exc:
                self._lost(exc)
        self.in_transaction = False
        self.accepted = []

    async def close(self) -> None:
        if self.in_flight is not None and not self.in_flight.done():
            # A transaction outlives its client (hang-up after the final dot): let it finish first.
            await asyncio.wait({self.in_flight})
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def data(self, txn: Transaction) -> DataOutcome:
        """Forwarding and recording run as their own task: a client that hangs up after the final dot
        cancels us, not them, so the next hop has a complete copy or none and the store agrees with it."""
        self.in_flight = asyncio.ensure_future(self._data(txn))
        return await asyncio.shield(self.in_flight)

    async def _data(self, txn: Transaction) -> DataOutcome:
        relay, metrics = self.relay, self.relay.metrics
        metrics.received.inc()
        started = time.perf_counter()
        passed: list[str] = []
        early: list[StoreRead] = []

        def start_retry_check() -> None:
            # A decorated message is checked against earlier attempts before it goes out. Asked now, the
            # store's reader thread answers while the copies are signed (OpenSSL releases the GIL), not
            # after: one thread round trip less in each rejection's time (issue 8, one session). SQLite
            # answers at once, on this thread (EventStore.delivered_recipients).
            read = self._start_store_read(txn, txn.rcpt_tos)
            if read is not None:
                early.append(read)

        def prepare(on_decorating: Callable[[], None] | None) -> Plan:
            # All CPU work on the message bytes: inline for small messages, in a worker thread for large
            # ones, so other sessions keep being served meanwhile (INLINE_PLAN_BYTES; issue 3, "Bounded").
            txn.content = normalize_line_endings(txn.content)
            # Hashed in two steps, not over sender + content joined: that join copied a 27 MB message once
            # more while holding the GIL (scripts/reliability "stall"); the digest is the same.
            digest = hashlib.sha256(txn.mail_from.lower().encode() + b"\0")
            digest.update(txn.content)
            txn.fingerprint = digest.hexdigest()
            return relay.plan(txn, passed.append, on_decorating)

        try:
            if len(txn.content) <= INLINE_PLAN_BYTES:
                plan = prepare(start_retry_check)
            else:
                # From a worker thread the retry check cannot be started (only the loop's thread may submit
                # to its executors): it is asked once the plan is back, as before.
                budget = relay.settings.processing.time_budget
                plan = await asyncio.wait_for(asyncio.to_thread(prepare, None), budget)
        except TimeoutError:
            metrics.failed_open.labels(stage="timeout").inc()
            plan = Plan([Group(list(txn.rcpt_tos), txn.content)], "failed-open:timeout")
        metrics.processing_seconds.observe(time.perf_counter() - started)
        for reason in passed:
            metrics.passed_through.labels(reason=reason).inc()
        rule = plan.verdict.rule if plan.verdict and plan.verdict.rule else "-"
        log.info(
            "%s: from=<%s> size=%d nrcpt=%d decision=%s rule=%s",
            txn.txn_id,
            txn.mail_from,
            len(txn.content),
            len(txn.rcpt_tos),
            plan.decision,
            rule,
        )

        # A counted rejection records once the next hop has answered: announced now, the store's next commit
        # waits for its write, so that several messages share one fsync (issue 8).
        expected = relay.store.expect_write() if _counted(plan) and relay.store_usable() else None
        try:
            already = await self._read_delivered(txn, plan, early[0] if early else None)
            groups = []
            for g in plan.groups:
                left = list(g.recipients)
                if already:  # a retry: what an earlier attempt delivered is not sent again (hashed only then)
                    left = []
                    for r in g.recipients:
                        if relay.recipient_hash(r) in already:
                            log.info(
                                "%s: to=<%s> status=sent (delivered by an earlier attempt)",
                                txn.txn_id,
                                mask(r),
                            )
                        else:
                            left.append(r)
                if left:
                    groups.append(Group(left, g.content, g.copy))

            started = time.perf_counter()
            results: list[GroupResult] = []
            try:
                await asyncio.wait_for(
                    self._forward(txn, groups, results), relay.settings.next_hop.transaction_timeout
                )
            except TimeoutError:
                self.conn = None
                self.in_transaction = False
                metrics.next_hop_unavailable.labels(stage="DATA").inc()
                log.warning("%s: next hop unavailable (transaction timeout)", txn.txn_id)
                # What the next hop accepted before the time ran out stays delivered: recorded, and not sent
                # again on the sender's retry. The rest waits for that retry.
                _defer_unanswered(groups, results)
            metrics.forwarding_seconds.observe(time.perf_counter() - started)
            # A transaction opened live at MAIL/RCPT may be left unused (every copy had been delivered by an
            # earlier attempt): close it, or the client's next MAIL would meet "503 nested MAIL" downstream.
            await self.reset()
            return await self._conclude(txn, plan, results, skipped=bool(already), expected=expected)
        finally:
            if expected is not None:
                expected.withdraw()  # if it never reached the store (a failure on the way): no-op otherwise

    def _start_store_read(self, txn: Transaction, recipients: list[str]) -> StoreRead | None:
        """Start asking the store which of `recipients` an earlier attempt of this message delivered a copy
        to, once the journal has said what it holds; None while the store is paused (or if it cannot even
        be asked)."""
        relay = self.relay
        if not relay.store_usable():
            return None
        # The journal first: a replay drops an entry only once it is committed to the store, so an entry
        # gone from the journal by now is in the store's answer. Asked the other way round, a replay between
        # the two questions hid it from both, and the applicant got a second copy.
        journalled = relay.journal.delivered(txn.fingerprint)
        hashes = {relay.recipient_hash(r) for r in recipients}
        try:
            answer = relay.store.delivered_recipients(txn.fingerprint, hashes)
            return StoreRead(frozenset(recipients), journalled, answer)
        except Exception as exc:
            relay.store_failed(txn.txn_id, "reading delivered copies", exc)
            return None

    async def _read_delivered(self, txn: Transaction, plan: Plan, early: StoreRead | None) -> set[str]:
        """Hashes of the recipients an earlier attempt of this message already delivered a copy to.
        `early` is the store's answer asked for while the message was planned, if it was."""
        relay = self.relay
        if len(plan.groups) == 1 and plan.groups[0].copy is None:
            if early is not None:
                early.abandon()  # the plan failed open after the read began: nothing to check
            return set()
        recipients = [r for g in plan.groups for r in g.recipients]
        read = early
        if read is not None and read.recipients != set(recipients):
            read.abandon()  # asked about other recipients than the plan's (it never has been so far)
            read = None
        if read is None:
            read = self._start_store_read(txn, recipients)
        if read is None:
            # What this relay delivered while the database was away is in its journal (issue 5).
            return relay.journal.delivered(txn.fingerprint)
        already = set(read.journalled)
        try:
            already |= await read.answer
        except Exception as exc:
            relay.store_failed(txn.txn_id, "reading delivered copies", exc)
        return already

    async def _forward(self, txn: Transaction, groups: list[Group], results: list[GroupResult]) -> None:
        """Each group to the next hop, its outcome into `results` as it comes (kept if time runs out)."""
        # One group whose recipients are exactly those the next hop accepted live: send DATA on the open
        # transaction (the common case: pass-through, or one applicant). Otherwise a transaction per group.
        # If the next hop closed the connection meanwhile (its command timeout, RFC 5321 §4.5.3.2.7, ran out
        # during a slow upload), nothing was sent yet: a new connection and transaction, not a 451.
        reuse = (
            len(groups) == 1
            and self.conn is not None
            and self.conn.alive
            and self.in_transaction
            and sorted(groups[0].recipients) == sorted(self.accepted)
        )
        for index, group in enumerate(groups):
            result = GroupResult(group)
            results.append(result)
            try:
                if not (reuse and index == 0):
                    await self._open_group(txn, group, result)
                    if not result.group.recipients:
                        continue
                reply = await self._conn().data(group.content)
                # A refusal may answer the DATA command itself, which leaves the next hop's transaction
                # open (only the reply to the final dot ends it, RFC 5321 §4.1.1.4): RSET before the next
                # MAIL, or it meets "503 nested MAIL". After a refused final dot, RSET does no harm.
                self.in_transaction = not reply.ok
                result.data_reply = reply
                if reply.ok:
                    result.delivered = list(group.recipients)
                elif reply.kind == "4xx":
                    result.deferred = [(r, reply) for r in group.recipients]
                else:
                    result.refused = [(r, reply) for r in group.recipients]
            except NextHopUnavailable as exc:
                self._lost(exc)
                log.warning("%s: next hop unavailable (%s)", txn.txn_id, exc.what)
                pending = [r for r in group.recipients if r not in result.delivered]
                result.deferred.extend((r, None) for r in pending)
                # The next hop is gone: the groups not yet tried wait for the sender's retry.
                for later in groups[index + 1 :]:
                    results.append(GroupResult(later, deferred=[(r, None) for r in later.recipients]))
                break

    def _lost(self, exc: NextHopUnavailable) -> None:
        """The next hop is gone (exc says where): forget the connection, and count it wherever it happened,
        for the alert on an unreachable next hop (deploy/prometheus/alerts.yml)."""
        self.conn = None
        self.in_transaction = False
        self.relay.metrics.next_hop_unavailable.labels(stage=exc.stage).inc()

    def _conn(self) -> HopConnection:
        if self.conn is None:
            raise NextHopUnavailable("disconnect", "connection lost", "DATA")
        return self.conn

    async def _open_group(self, txn: Transaction, group: Group, result: GroupResult) -> None:
        conn = await self._connection()
        if self.in_transaction:
            await conn.rset()
            self.in_transaction = False
        options = self._mail_options(conn, txn.mail_options)
        if isinstance(options, Unsupported):
            options = []  # MAIL already checked it for this session's next hop
        reply = await conn.mail(txn.mail_from, options)
        if not reply.ok:
            bucket = result.deferred if reply.kind == "4xx" else result.refused
            bucket.extend((r, reply) for r in group.recipients)
            group.recipients = []
            return
        self.in_transaction = True
        accepted = []
        for recipient in group.recipients:
            reply = await conn.rcpt(recipient)
            if reply.ok:
                accepted.append(recipient)
            else:
                (result.deferred if reply.kind == "4xx" else result.refused).append((recipient, reply))
        if not accepted:
            await conn.rset()
            self.in_transaction = False
        group.recipients = accepted

    async def _conclude(
        self,
        txn: Transaction,
        plan: Plan,
        results: list[GroupResult],
        *,
        skipped: bool,
        expected: ExpectedWrite | None = None,
    ) -> DataOutcome:
        relay, metrics = self.relay, self.relay.metrics
        delivered = [r for res in results for r in res.delivered]
        deferred = [d for res in results for d in res.deferred]
        refused = [d for res in results for d in res.refused]
        for res in results:
            if res.data_reply is not None:
                metrics.next_hop_replies.labels(**{"class": res.data_reply.kind}).inc()
            elif any(reply is None for _r, reply in res.deferred):
                metrics.next_hop_replies.labels(**{"class": "unavailable"}).inc()
            copy = res.group.copy
            signed = f" decorated dkim=d={copy.signed_domain},a={'+'.join(copy.signed_with)}" if copy else ""
            for r in res.delivered:
                assert res.data_reply is not None
                log.info(
                    "%s: to=<%s> status=sent (%d %s)%s",
                    txn.txn_id,
                    mask(r),
                    res.data_reply.code,
                    res.data_reply.one_line(),
                    signed,
                )
            for r, reply in res.deferred:
                text = f"{reply.code} {reply.one_line()}" if reply else "no reply from next hop"
                log.info("%s: to=<%s> status=deferred (%s)", txn.txn_id, mask(r), text)
            for r, reply in res.refused:
                log.info(
                    "%s: to=<%s> status=bounced (%d %s)", txn.txn_id, mask(r), reply.code, reply.one_line()
                )

        complete = not deferred and not refused
        records = []
        for res in results:
            if not res.delivered or res.data_reply is None:
                continue
            copy = res.group.copy
            for r in res.delivered:
                referral = None
                if copy is not None:
                    metrics.decorated.inc()
                    for algorithm in copy.signed_with:
                        metrics.dkim_signatures.labels(result="signed", algorithm=algorithm).inc()
                    referral = ReferralFields(
                        tenant_id=copy.tenant.id,
                        token=copy.token,
                        rule_id=copy.rule_id,
                        message_id=next(iter(copy.parsed.header_values("Message-ID")), None),
                        recipient=r if copy.tenant.store_recipient == "clear" else None,
                    )
                records.append(
                    CopyRecord(txn.fingerprint, relay.recipient_hash(r), res.data_reply.one_line(), referral)
                )
        write_records = bool(records) and (any(rec.referral for rec in records) or not complete)
        seen = None
        if _counted(plan):
            assert plan.tenant_id is not None
            # The follow-up rate's denominator, in the same write as the events: one transaction per message.
            seen = SeenRejection(plan.tenant_id, plan.decision == "decorated", txn.fingerprint)
        if write_records or seen is not None:
            event_ids: list[int] | None = None
            if relay.store_usable():
                started = time.perf_counter()
                try:
                    event_ids = await relay.store.record_events(
                        records if write_records else [],
                        mark_delivered=not complete,
                        seen=seen,
                        expected=expected,
                    )
                except Exception as exc:
                    relay.store_failed(txn.txn_id, "recording delivered copies", exc)
                # The client's reply waits for this: a slow database shows here first (issue 8 profile).
                metrics.recording_seconds.observe(time.perf_counter() - started)
            if event_ids is None:
                # The copies are delivered: keep their records, and the rejection's count, in the fsynced
                # journal until the database is back (0 events lost), with the time they were delivered
                # (a referral counts when it is made), and answer as the next hop did.
                journalled = records if write_records else []
                log.info(
                    "%s: journalling %d record(s)%s until the database is back",
                    txn.txn_id,
                    len(journalled),
                    " and the rejection's count" if seen is not None else "",
                )
                try:
                    await relay.journal.append_off_loop(journalled, not complete, seen, datetime.now(UTC))
                except OSError:
                    log.critical(
                        "%s: journal write failed: %d delivered copies unrecorded%s",
                        txn.txn_id,
                        len(journalled),
                        ", the rejection uncounted" if seen is not None else "",
                    )
            else:
                for rec in records:  # a referral among them means they were written
                    if rec.referral is not None:
                        metrics.referral_events.labels(tenant=rec.referral.tenant_id).inc()
                if event_ids:
                    log.info("%s: referral event id=%s", txn.txn_id, ",".join(map(str, event_ids)))

        if complete:
            last = (
                next(res.data_reply for res in reversed(results) if res.data_reply is not None)
                if delivered
                else Reply(250, "2.0.0 Ok: already delivered")
            )
            return Mirrored(last)
        if delivered or (skipped and deferred):
            return PartlyDelivered()
        if deferred:
            reply = next((reply for _r, reply in deferred if reply is not None), None)
            return Mirrored(reply) if reply is not None else Unavailable("disconnect")
        return Mirrored(refused[0][1])
