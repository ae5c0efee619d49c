"""The aiosmtpd server and its handler: policy at MAIL/RCPT, the relay's outcomes worded as replies."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import sys
import weakref
from collections.abc import Callable, Sequence
from email._header_value_parser import get_addr_spec, get_angle_addr  # what aiosmtpd parses addresses with
from types import MethodType
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException

from mailrelay.config import Settings
from mailrelay.metrics import Metrics
from mailrelay.relay import Mirrored, Relay, RelaySession, Transaction, Unavailable, mask
from mailrelay.smtp import replies
from mailrelay.smtp.auth import Authenticator, load_users
from mailrelay.smtp.balance import BalancedListener, SharedListen
from mailrelay.smtp.data import OneBufferDataSMTP

log = logging.getLogger("mailrelay.smtp")

# Control characters, spaces and angle brackets never belong in an envelope address we forward: aiosmtplib
# would otherwise rewrite some of them silently (a\rb@x → ab@x), and CR/LF would reach headers or commands.
# asyncio's default accept backlog is 100: a burst of connections overflows it and a legitimate client then
# waits for the kernel's 1 s SYN retry (scripts/reliability, flood). The kernel caps it at somaxconn.
LISTEN_BACKLOG = 1024

# Controls, blanks and brackets; and bytes that are not UTF-8 (RFC 6531 §3.3), which aiosmtpd hands over as
# surrogate escapes: they cannot be passed on, and a 4xx would have the sender retry them forever.
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>\udc80-\udcff]")
# The path nearly every MAIL FROM and RCPT TO carries: <dot-atom@dot-atom> (RFC 5321 §4.1.2). The email
# parser's answer for it is the address as written, and what follows with the blanks after `>` stripped.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


def _command_size_limit() -> int:
    return int(SMTP.command_size_limit)  # aiosmtpd's default for a command's line (RFC 5321 §4.5.3.1.4)


def _address_ok(address: str) -> bool:
    return not _BAD_ADDRESS.search(address) and address.count("@") >= 1 and not address.startswith("@")


class _State:
    """What the handler keeps per client connection."""

    def __init__(self, relay_session: RelaySession, peer_ip: str, allowed: bool) -> None:
        self.relay_session = relay_session
        self.peer_ip = peer_ip
        self.allowed = allowed
        self.txn_id = ""


class RelayHandler:
    """aiosmtpd handler: every hook returns a reply line; nothing escapes as aiosmtpd's 500-with-traceback."""

    def __init__(self, settings: Settings, relay: Relay, metrics: Metrics) -> None:
        self.settings = settings
        self.relay = relay
        self.metrics = metrics
        self.states: weakref.WeakKeyDictionary[Session, _State] = weakref.WeakKeyDictionary()
        self.closing = False  # set on SIGTERM: new sessions are refused, those in flight finish
        self.connections: dict[str, int] = {}
        self.total_connections = 0

    def admit(self, protocol: RelaySMTP) -> str | None:
        """None to serve this new connection, or the reply that refuses it."""
        if self.closing:
            self.metrics.connections_refused.labels(reason="shutting_down").inc()
            return replies.SHUTTING_DOWN
        peer = protocol.session.peer if protocol.session is not None else None
        client = str(peer[0]) if peer else ""
        if self.total_connections >= self.settings.smtp.max_connections:
            self.metrics.connections_refused.labels(reason="too_many_connections").inc()
            return replies.TOO_MANY_CONNECTIONS
        if self.connections.get(client, 0) >= self.settings.smtp.max_connections_per_client:
            self.metrics.connections_refused.labels(reason="too_many_from_client").inc()
            return replies.TOO_MANY_CONNECTIONS_FROM_CLIENT
        self.connections[client] = self.connections.get(client, 0) + 1
        self.total_connections += 1
        protocol._client = client
        return None

    def release(self, protocol: RelaySMTP) -> None:
        client = protocol._client
        if client is None:
            return
        protocol._client = None
        self.total_connections -= 1
        left = self.connections.get(client, 1) - 1
        if left:
            self.connections[client] = left
        else:
            self.connections.pop(client, None)

    def in_flight(self) -> list[asyncio.Task[Any]]:
        """Transactions still being forwarded, for a graceful stop."""
        return [
            task
            for state in list(self.states.values())
            if (task := state.relay_session.in_flight) is not None and not task.done()
        ]

    def state(self, session: Session) -> _State:
        state = self.states.get(session)
        if state is None:
            peer_ip = str(session.peer[0]) if session.peer else ""
            try:
                address = ipaddress.ip_address(peer_ip.split("%")[0])
                allowed = any(address in net for net in self.settings.smtp.client_networks)
            except ValueError:
                allowed = False
            state = _State(self.relay.new_session(peer_ip), peer_ip, allowed)
            self.states[session] = state
        return state

    def _count(self, command: str, reply: str) -> str:
        self.metrics.smtp_replies.labels(command=command, **{"class": replies.reply_class(reply)}).inc()
        return reply

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd reads pipelined commands correctly but does not say so; RFC 2920 needs the keyword.
        session.host_name = hostname
        lines = [*responses[:-1], "250-PIPELINING", responses[-1]]
        # aiosmtpd writes each line it is given as its own TCP segment; clients that read a reply per
        # segment (nmap's smtp library) then pair later commands with stale lines. One write, like Postfix.
        return ["\r\n".join(lines)]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        state = self.state(session)
        if self.closing:
            return self._count("MAIL", replies.SHUTTING_DOWN)
        # The null sender of bounces and DSNs (RFC 5321 §4.5.5): aiosmtpd hands it over as "<>" and needs a
        # non-empty envelope.mail_from; toward the next hop it is the empty address again.
        sender = "" if address == "<>" else address
        if sender and not _address_ok(sender):
            self.metrics.connections_refused.labels(reason="bad_address").inc()
            return self._count("MAIL", replies.BAD_SENDER_ADDRESS)
        state.txn_id = secrets.token_hex(5).upper()
        if not state.allowed and not session.authenticated:
            # Relay policy is answered at RCPT (like Postfix's smtpd_recipient_restrictions), and nothing is
            # opened toward the next hop for a client that may not relay.
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return self._count("MAIL", replies.OK)
        try:
            outcome = await state.relay_session.mail(sender, list(mail_options))
        except Exception:
            log.exception("%s: MAIL failed inside mailrelay", state.txn_id)
            self.metrics.internal_errors.inc()
            return self._count("MAIL", replies.TEMPORARY_FAILURE)
        reply = replies.for_command(outcome)
        if isinstance(outcome, Mirrored) and outcome.reply.ok:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        else:
            if isinstance(outcome, Unavailable):
                log.warning("%s: next hop unavailable (%s)", state.txn_id, outcome.what)
            log.info("%s: client=[%s] from=<%s> refused: %s", state.txn_id, state.peer_ip, address, reply)
        return self._count("MAIL", reply)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        state = self.state(session)
        if not state.allowed and not session.authenticated:
            self.metrics.connections_refused.labels(reason="client_network").inc()
            log.info("%s: client=[%s] relay denied to <%s>", state.txn_id, state.peer_ip, mask(address))
            return self._count("RCPT", replies.RELAY_DENIED)
        if not _address_ok(address):
            self.metrics.connections_refused.labels(reason="bad_address").inc()
            return self._count("RCPT", replies.BAD_ADDRESS)
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            self.metrics.connections_refused.labels(reason="too_many_recipients").inc()
            return self._count("RCPT", replies.TOO_MANY_RECIPIENTS)
        try:
            outcome = await state.relay_session.rcpt(address)
        except Exception:
            log.exception("%s: RCPT failed inside mailrelay", state.txn_id)
            self.metrics.internal_errors.inc()
            return self._count("RCPT", replies.TEMPORARY_FAILURE)
        reply = replies.for_command(outcome)
        if isinstance(outcome, Mirrored) and outcome.reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            if isinstance(outcome, Unavailable):
                log.warning("%s: next hop unavailable (%s)", state.txn_id, outcome.what)
            log.info("%s: to=<%s> refused at RCPT: %s", state.txn_id, mask(address), reply)
        return self._count("RCPT", reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        state = self.state(session)
        content = envelope.original_content or b""
        txn = Transaction(
            txn_id=state.txn_id or secrets.token_hex(5).upper(),
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            mail_options=list(envelope.mail_options),
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
        )
        try:
            outcome = await state.relay_session.data(txn)
            reply = replies.for_data(outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Issue 2 §5: any exception in our code ends as 451 with generic text, and the transaction is
            # reset (returning a reply from handle_DATA resets it; raising would leave "nested MAIL").
            log.exception("%s: DATA failed inside mailrelay", txn.txn_id)
            self.metrics.internal_errors.inc()
            reply = replies.TEMPORARY_FAILURE
        log.info("%s: reply=%s", txn.txn_id, reply)
        return self._count("DATA", reply)

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope, args: list[str]) -> Any:
        # RFC 4954 §4: "An AUTH command issued during a mail transaction MUST be rejected with a 503 reply";
        # aiosmtpd runs it. A client outside client_networks that sent MAIL first then had its RCPTs relayed
        # into a transaction never opened toward the next hop: 451 4.4.1 "Next hop not available".
        if envelope.mail_from:
            log.info("%s: AUTH refused during a mail transaction", self.state(session).txn_id)
            return replies.AUTH_IN_TRANSACTION
        return MISSING  # aiosmtpd goes on with the mechanism

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            await self.state(session).relay_session.reset()
        except Exception:
            log.exception("RSET failed inside mailrelay")
        return "250 2.0.0 Ok"

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error: (Type) text": permanent, and it leaks internals.
        log.error("session error: %s", type(error).__name__)
        self.metrics.internal_errors.inc()
        return replies.TEMPORARY_FAILURE

    def session_closed(self, session: Session) -> None:
        state = self.states.pop(session, None)
        if state is not None:
            task = asyncio.ensure_future(state.relay_session.close())
            _background.add(task)
            task.add_done_callback(_background.discard)


_background: set[asyncio.Future[Any]] = set()


class RelaySMTP(OneBufferDataSMTP):
    """aiosmtpd's SMTP with admission control (connection caps, shutdown) and session bookkeeping."""

    def __init__(
        self,
        handler: RelayHandler,
        metrics: Metrics,
        on_lost: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._relay_handler = handler
        self._metrics = metrics
        self._on_lost = on_lost  # `serve --workers N`: gives the session's place back (smtp/balance.py)
        self._client: str | None = None  # the address counted against the caps, once admitted

    @classmethod
    def factory(
        cls, handler: RelayHandler, metrics: Metrics, **kwargs: Any
    ) -> Callable[[Callable[[], None] | None], RelaySMTP]:
        """Connections made from one template. aiosmtpd 1.4.6's __init__ looks its own methods and the
        handler's up again for every connection (inspect.getmembers, dir, inspect.signature): 121 µs of CPU a
        connection, the cost of a rule evaluation, paid per message by a client that sends one message a
        connection, as smtp-source without -d does and an MTA with no backlog for us (issue 8;
        bench/README.md, "Connections"). It runs once here, and each connection gets the template's settings,
        fresh asyncio protocol state, and the template's bound methods bound to itself: the same attributes as
        aiosmtpd's __init__ gives, which tests/test_tls_auth.py checks.
        """
        template = cls(handler, metrics, None, **kwargs)
        loop = template.loop
        limit = template.line_length_limit

        def protocol() -> RelaySMTP:
            # What asyncio's StreamReaderProtocol.__init__ sets (reader, futures, transport): per connection.
            conn = cls.__new__(cls)
            asyncio.StreamReaderProtocol.__init__(
                conn, asyncio.StreamReader(loop=loop, limit=limit), conn._cb_client_connected, loop=loop
            )
            return conn

        per_connection = {*vars(protocol()), "_smtp_methods", "_auth_methods", "_on_lost"}
        shared = {name: value for name, value in vars(template).items() if name not in per_connection}
        smtp_methods = [(name, method.__func__) for name, method in template._smtp_methods.items()]
        # The handler's AUTH mechanisms stay bound to the handler; aiosmtpd's own (builtin) to the protocol.
        auth_methods = [
            (name, attr, cast(MethodType, attr.method).__func__ if attr.is_builtin else None)
            for name, attr in template._auth_methods.items()
        ]

        def make(on_lost: Callable[[], None] | None) -> RelaySMTP:
            conn = protocol()
            state = vars(conn)
            state.update(shared)
            state["_smtp_methods"] = {name: MethodType(func, conn) for name, func in smtp_methods}
            state["_auth_methods"] = {
                name: attr if func is None else attr._replace(method=MethodType(func, conn))
                for name, attr, func in auth_methods
            }
            # aiosmtpd keeps these on the class, cleared by every new connection's __init__ and raised by
            # every EHLO (its SIZE and SMTPUTF8 parameters lengthen MAIL): one connection's EHLO changed
            # the limit of the others, and a connection opened meanwhile undid it. Each has its own here,
            # the instance attribute its maintainers wanted in its place (aio-libs/aiosmtpd#56, #58).
            state["command_size_limits"] = collections.defaultdict(_command_size_limit)
            state["_on_lost"] = on_lost
            return conn

        return make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # connection_made runs again after STARTTLS
        before_tls = self.session
        super().connection_made(transport)
        if first:
            self._metrics.active_sessions.inc()
        elif before_tls is not None and before_tls is not self.session:
            # RFC 3207 §4.2: after STARTTLS the server discards what it knew, and aiosmtpd gives the
            # connection a new Session. connection_lost closes only that one: end the first now, with its
            # next-hop connection (a MAIL before STARTTLS left a transaction open in it).
            self._relay_handler.session_closed(before_tls)

    async def _handle_client(self) -> None:
        refusal = self._relay_handler.admit(self)
        if refusal is not None:
            # Answer before closing, so the client knows to come back later (RFC 5321 §3.8): a refused
            # connection costs one write and its file descriptor is free at once.
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        log.info("connect from [%s]", self._client)
        await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        if status[:4] in ("421 ", b"421 ") and self.transport is not None:
            # RFC 5321 §3.8: a 421 announces that the server closes the channel, and Postfix's smtpd hangs
            # up after each. Without this, a session open at SIGTERM heard 421 4.3.2 at MAIL and stayed open.
            self.transport.close()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's TLS handshake failed after our 220 to STARTTLS: a protocol version or cipher we do
            # not share, a scanner, a hang-up halfway. aiosmtpd closes the connection without a reply. It is
            # the client's failure, not ours: the handler would count it as an internal error, and the alert
            # on those would page someone for every such client.
            cause = error.__cause__
            reason = getattr(cause, "reason", None) or type(cause).__name__
            log.warning("STARTTLS from [%s] failed: %s", self._client, reason)
            return replies.TEMPORARY_FAILURE  # not sent
        return await super().handle_exception(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4.6's _getaddr without the typing.Protocol class it defines on every call (~25 µs,
        twice per message; issue 8), and without the email parser for a plain <local@domain>. Same results
        (tests/test_smtp_data.py checks them against aiosmtpd's), except that a path the parser fails on is
        malformed."""
        if not arg:
            return "", ""
        plain = _PLAIN_PATH.match(arg)
        rest = "" if plain is None else arg[plain.end() :]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # as the parser's folding white space does: str.lstrip
        if plain is not None and not rest.startswith("("):  # a comment: left to the parser
            # The parser builds a token tree for it: ~60 µs per address, twice per message (issue 8).
            addr: str = plain.group(1)
        else:
            try:
                parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
                address, rest = parse(arg)
                addr = address.addr_spec
            except Exception:
                # Besides HeaderParseError, the email package's parser fails on some paths with IndexError
                # ("<", a lone '"'), AttributeError ("<a@[>") or UnboundLocalError ("a@[ "): in aiosmtpd
                # those escaped as an internal error (451, and the internal-errors alert). Malformed: 553.
                return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's, and a SIZE value that is not ASCII digits (RFC 1870 §3: 1*20DIGIT) is a syntax error
        (501). aiosmtpd checks it with str.isdigit: SIZE=² then failed int() and was answered as an internal
        error (451), and SIZE=١٢ (Arabic-Indic digits) was taken for 12 and passed to the next hop."""
        result = super()._getparams(params)
        size = result.get("SIZE") if result is not None else None
        if isinstance(size, str) and not (size.isascii() and size.isdigit()):
            return None
        return result

    def eof_received(self) -> bool:
        # aiosmtpd cancels the session's handler at EOF, then asks to keep the transport half-open (True).
        # With the handler gone, nothing closes it before the idle timeout: a client that hung up before its
        # handler first ran (queued while the relay started, say) kept its descriptor for `smtp.timeout`.
        # False closes it now.
        super().eof_received()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        self._metrics.active_sessions.dec()
        if self._client is not None:
            log.info("disconnect from [%s]", self._client)
        self._relay_handler.release(self)
        if session is not None:
            self._relay_handler.session_closed(session)
        if self._on_lost is not None:
            self._on_lost()


def _protocol_factory(
    settings: Settings, handler: RelayHandler, metrics: Metrics
) -> Callable[[Callable[[], None] | None], RelaySMTP]:
    s = settings.smtp
    loop = asyncio.get_running_loop()
    tls_context = None
    if s.tls_cert_file is not None and s.tls_key_file is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
    authenticator = None
    if s.auth_users_file is not None:
        users = load_users(s.auth_users_file, str(settings.source))
        authenticator = Authenticator(users, s.auth_max_failures)

    return RelaySMTP.factory(
        handler,
        metrics,
        hostname=s.hostname,
        ident="mailrelay",
        data_size_limit=s.max_message_size,
        enable_SMTPUTF8=True,
        decode_data=False,
        timeout=s.timeout,
        tls_context=tls_context,
        require_starttls=s.require_starttls,
        authenticator=authenticator,
        # AUTH only inside TLS (538 otherwise), and at most 3 attempts per connection (then 421). A command
        # the limit does not name gets aiosmtpd's default ("*", 20 a connection): with {"AUTH": 3} alone,
        # a message's 21st RCPT, or a kept connection's 21st MAIL, got 421 and a hang-up. The others stay
        # unlimited, as they are without AUTH (max_recipients caps RCPT per transaction).
        auth_require_tls=True,
        command_call_limit={"AUTH": 3, "*": sys.maxsize} if authenticator else None,
        # PLAIN only: inside TLS it is all a submission client needs, and one mechanism less to get wrong.
        auth_exclude_mechanism=["LOGIN"],
        # aiosmtpd logs every address at INFO on the "mail.log" logger; ours are masked instead.
        loop=loop,
    )


async def start_smtp_server(
    settings: Settings,
    handler: RelayHandler,
    metrics: Metrics,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Listen on settings.smtp.listen (or host/port), or on `sock`, a socket passed by systemd."""
    s = settings.smtp
    loop = asyncio.get_running_loop()
    make = _protocol_factory(settings, handler, metrics)

    def factory() -> RelaySMTP:
        return make(None)

    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
    return await loop.create_server(
        factory,
        host or s.listen.host,
        s.listen.port if port is None else port,
        backlog=LISTEN_BACKLOG,
    )


def start_shared_smtp_server(
    settings: Settings, handler: RelayHandler, metrics: Metrics, shared: SharedListen
) -> BalancedListener:
    """`serve --workers N`: accept on the sockets the parent bound, balanced over the workers."""
    make = _protocol_factory(settings, handler, metrics)
    listener = BalancedListener(shared, make, asyncio.get_running_loop())
    listener.start()
    return listener
