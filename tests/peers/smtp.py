"""A scriptable local SMTP server (aiosmtpd) for tests: TLS modes, AUTH, scripted replies."""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.message
import email.policy
import inspect
import json
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Awaitable, Callable, Collection, Literal, Mapping

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from tests.peers.inbox import Inbox
from tests.peers.net import bound_socket
from tests.peers.tlsca import CertPair, server_context

Security = Literal["none", "starttls", "tls"]
DataReply = str | Callable[[Envelope], str | None] | None
BeforeData = Callable[[Envelope], Any] | Callable[[Envelope], Awaitable[Any]] | None
Hook = Callable[[Envelope], Any] | None
StepReply = str | Callable[[], str | None] | None
STEPS = ("greeting", "ehlo", "auth", "mail", "rcpt", "data", "final")

XOAUTH2_ERROR_CHALLENGE = json.dumps(
    {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
)
XOAUTH2_FAILED = "535 5.7.8 Username and Password not accepted"
AUTH_REQUIRED = "530 5.7.0 Authentication required"


@dataclass(frozen=True)
class Received:
    """One message the peer accepted (answered 2xx after DATA)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    auth_user: str | None

    @property
    def message(self) -> email.message.EmailMessage:
        """The data parsed with the stdlib email package (modern policy)."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


def _parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """Split `user=U\\x01auth=Bearer T\\x01\\x01` into (U, T), or None if malformed."""
    text = blob.decode("utf-8", errors="replace")
    if not text.endswith("\x01\x01"):
        return None
    fields = dict(part.partition("=")[::2] for part in text[:-2].split("\x01"))
    user, auth = fields.get("user"), fields.get("auth", "")
    if not user or not auth.startswith("Bearer "):
        return None
    return user, auth.removeprefix("Bearer ")


def _is_ok(reply: str) -> bool:
    """True for a 2xx reply."""
    return reply.startswith("2")


class _Handler:
    """aiosmtpd handler: scripted replies, XOAUTH2, password check and recording.

    No attribute may start with `auth_` except real mechanisms: aiosmtpd treats
    every handler member named `auth_*` as an AUTH mechanism.
    """

    def __init__(self, peer: "SmtpPeer", inbox: Inbox[Received]) -> None:
        self.peer = peer
        self.inbox = inbox

    def check_password(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator for PLAIN and LOGIN against the peer's users."""
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(errors="replace"), data.password.decode(errors="replace")
        ok = user in self.peer.users and self.peer.users[user] == password
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH XOAUTH2 the way Gmail answers it, with the JSON error challenge."""
        blob = await self._initial_response(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        parsed = _parse_xoauth2(blob)
        if parsed is not None and parsed[1] in (self.peer.xoauth2_tokens or ()):
            return AuthResult(success=True, auth_data=parsed[0])
        if await server.challenge_auth(XOAUTH2_ERROR_CHALLENGE) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=XOAUTH2_FAILED)

    @staticmethod
    async def _initial_response(server: SMTP, args: list[str]) -> bytes | None:
        """Return the decoded initial response, asking for it if absent; None once answered."""
        if len(args) == 1:
            answer = await server.challenge_auth("")
            return None if answer is MISSING else answer  # type: ignore[return-value]
        try:
            return base64.b64decode(args[1], validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Can't decode base64")
            return None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Demand AUTH if configured, then accept the sender unless a `mail_from_reply` is scripted."""
        self.peer.mail_from_count += 1
        self.peer.mail_options.append(list(options))
        # what the client had already sent behind MAIL: its RCPTs and DATA when it pipelines (RFC 2920)
        self.peer.behind_mail.append(bytes(getattr(server._reader, "_buffer", b"")))
        if self.peer.auth_required and not session.authenticated:
            return AUTH_REQUIRED
        reply = self.peer.scripted("mail") or self.peer.mail_from_reply or "250 OK"
        if _is_ok(reply):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return reply

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Count the client's goodbyes (a worker that stops closes its cached sessions)."""
        self.peer.quit_count += 1
        return "221 Bye"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO answer, with PIPELINING when the peer offers it (aiosmtpd does not by itself)."""
        session.host_name = hostname
        if self.peer.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept the recipient unless `rcpt_replies` scripts another answer for it."""
        if self.peer.rcpt_delay:
            await asyncio.sleep(self.peer.rcpt_delay)
        replies = self.peer.rcpt_replies
        reply = self.peer.scripted("rcpt") or replies.get(address) or replies.get(address.lower()) or "250 OK"
        if _is_ok(reply):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Run the fault hook, pick the scripted reply and record the message if it is 2xx."""
        hook = self.peer.before_data_reply
        if hook is not None and inspect.iscoroutinefunction(hook):
            await hook(envelope)
        elif hook is not None:
            await asyncio.to_thread(hook, envelope)  # keeps the loop serving other clients
        if self.peer.final_reply_delay:
            await asyncio.sleep(self.peer.final_reply_delay)
        scripted = self.peer.data_reply
        reply = scripted(envelope) if callable(scripted) else scripted
        reply = self.peer.scripted("final") or reply or "250 OK"
        if _is_ok(reply):
            self.inbox.add(self._received(session, envelope))
        return reply

    @staticmethod
    def _received(session: Session, envelope: Envelope) -> Received:
        """Build the record of an accepted message."""
        user = session.auth_data if isinstance(session.auth_data, str) else None
        return Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            auth_user=user,
        )


class _EchoingHandler(_Handler):
    """Answers every PLAIN and LOGIN attempt with a 535 that echoes the exchange, as some servers do."""

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """535 quoting the initial response (the base64 of \\0user\\0password)."""
        blob = args[1] if len(args) > 1 else ""
        return AuthResult(success=False, handled=False,
                          message=f"535 5.7.8 Authentication failed for AUTH PLAIN {blob}")

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """535 quoting both LOGIN steps, base64 and decoded."""
        user = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("Username:")
        if user is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        steps = f"{base64.b64encode(user).decode()} {base64.b64encode(password).decode()}"
        return AuthResult(success=False, handled=False,
                          message=f"535 5.7.8 LOGIN {steps} refused for {user.decode()}/{password.decode()}")


async def _run_hook(hook: Hook, envelope: Envelope) -> None:
    """Run a fault hook without blocking the loop that serves the other clients."""
    if hook is None:
        return
    if inspect.iscoroutinefunction(hook):
        await hook(envelope)
    else:
        await asyncio.to_thread(hook, envelope)


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server with scripted replies at the steps its handler API cannot reach
    (greeting, EHLO/HELO, AUTH, the DATA command) and hooks around DATA."""

    @property
    def _peer(self) -> "SmtpPeer":
        return self.event_handler.peer

    async def _handle_client(self) -> None:
        reply = self._peer.scripted("greeting")
        if reply is None:
            await super()._handle_client()
            return
        await self.push(reply)
        self.transport.close()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        reply = self._ehlo_refused = self._peer.scripted("ehlo")
        await (self.push(reply) if reply else super().smtp_EHLO(hostname))

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        # the client's HELO after a refused EHLO gets the same answer: one scripted call per greeting
        reply = self._ehlo_refused if hasattr(self, "_ehlo_refused") else self._peer.scripted("ehlo")
        await (self.push(reply) if reply else super().smtp_HELO(hostname))

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        reply = self._peer.scripted("auth")
        await (self.push(reply) if reply else super().smtp_AUTH(arg))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        await _run_hook(self._peer.on_data_command, self.envelope)
        reply = self._peer.scripted("data")
        if reply:
            await self.push(reply)
            return
        envelope = self.envelope
        await super().smtp_DATA(arg)  # the final reply has been written (push drains) when this returns
        await _run_hook(self._peer.after_data_reply, envelope)


class _BoundController(Controller):
    """A Controller serving on a socket bound beforehand (aiosmtpd cannot listen on port 0)."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        """Listen on the pre-bound socket (aiosmtpd's documented override point)."""
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        """The scripted server (aiosmtpd's documented override point)."""
        return _ScriptedSMTP(self.handler, **self.SMTP_kwargs)


class SmtpPeer:
    """A local SMTP server on 127.0.0.1 at a free port, as a context manager."""

    def __init__(
        self,
        *,
        security: Security = "none",
        cert: CertPair | None = None,
        require_starttls: bool | None = None,
        auth_require_tls: bool = True,
        users: Mapping[str, str] | None = None,
        auth_required: bool | None = None,
        xoauth2_tokens: Collection[str] | None = None,
        rcpt_replies: Mapping[str, str] | None = None,
        mail_from_reply: str | None = None,
        data_reply: DataReply = None,
        before_data_reply: BeforeData = None,
        smtputf8: bool = False,
        pipelining: bool = False,
        echo_auth: bool = False,
        data_size_limit: int = 64 * 1024 * 1024,
        ready_timeout: float = 5.0,
        step_replies: Mapping[str, StepReply] | None = None,
        on_data_command: Hook = None,
        after_data_reply: Hook = None,
        rcpt_delay: float = 0.0,
        final_reply_delay: float = 0.0,
    ) -> None:
        """Configure the peer; nothing listens until `start()` or `with`.

        `step_replies` scripts the reply at a step of STEPS (a string, or a callable returning one,
        or None for the normal answer), over the other options. `on_data_command` runs when DATA
        arrives (before the end of DATA), `before_data_reply` after the final "." and before the
        reply (inside the DATA window), `after_data_reply` once the reply was written; the delays
        slow each RCPT reply and the final reply.
        """
        if security != "none" and cert is None:
            raise ValueError(f"security={security!r} needs cert=CertPair")
        self.security = security
        self.cert = cert
        self.require_starttls = security == "starttls" if require_starttls is None else require_starttls
        self.auth_require_tls = auth_require_tls
        self.users: dict[str, str] = dict(users or {})
        self.xoauth2_tokens = set(xoauth2_tokens) if xoauth2_tokens is not None else None
        self.auth_required = bool(users or xoauth2_tokens) if auth_required is None else auth_required
        self.rcpt_replies: dict[str, str] = dict(rcpt_replies or {})
        self.mail_from_reply = mail_from_reply
        self.data_reply = data_reply
        self.before_data_reply = before_data_reply
        self.smtputf8 = smtputf8
        self.pipelining = pipelining  # offer PIPELINING (RFC 2920); aiosmtpd reads a pipelined group in order
        self.behind_mail: list[bytes] = []  # per MAIL command, the bytes already received after it
        self.echo_auth = echo_auth
        self.data_size_limit = data_size_limit  # offered as SIZE; a larger message is refused after DATA
        self.mail_from_count = 0  # MAIL commands received, whatever their answer
        self.quit_count = 0  # QUIT commands received: sessions the client closed politely
        self.mail_options: list[list[str]] = []  # the parameters of each MAIL command (e.g. SIZE=n)
        self.ready_timeout = ready_timeout
        unknown = set(step_replies or ()) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown SMTP steps {sorted(unknown)}; known: {STEPS}")
        self.step_replies: dict[str, StepReply] = dict(step_replies or {})
        self.on_data_command = on_data_command
        self.after_data_reply = after_data_reply
        self.rcpt_delay = rcpt_delay
        self.final_reply_delay = final_reply_delay
        self._inbox: Inbox[Received] = Inbox("SMTP message")
        self._controller: Controller | None = None
        self._port: int | None = None

    @property
    def host(self) -> str:
        """The address the peer listens on."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port; only valid while running."""
        if self._port is None:
            raise RuntimeError("SmtpPeer is not running")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) while running."""
        return self.host, self.port

    @property
    def messages(self) -> list[Received]:
        """A copy of the messages accepted so far, in order."""
        return self._inbox.snapshot()

    def scripted(self, step: str) -> str | None:
        """The reply scripted for a step right now, or None for the normal answer."""
        reply = self.step_replies.get(step)
        return reply() if callable(reply) else reply

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Block until `count` messages were accepted and return them all."""
        return self._inbox.wait_for(count, timeout)

    def clear(self) -> None:
        """Forget the messages accepted so far."""
        self._inbox.clear()

    def start(self) -> "SmtpPeer":
        """Start listening on a port bound right here, so no other process can take it meanwhile."""
        sock = bound_socket(self.host)
        controller = self._controller_for(sock)
        try:
            controller.start()
        except BaseException:
            sock.close()
            raise
        self._controller, self._port = controller, controller.port
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._controller is not None:
            self._controller.stop()
        self._controller, self._port = None, None

    def __enter__(self) -> "SmtpPeer":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _controller_for(self, sock: socket.socket) -> Controller:
        """Build the aiosmtpd Controller for this configuration."""
        context = server_context(self.cert) if self.cert is not None else None
        handler = (_EchoingHandler if self.echo_auth else _Handler)(self, self._inbox)
        return _BoundController(
            handler,
            sock,
            ready_timeout=self.ready_timeout,
            server_hostname="localhost",
            enable_SMTPUTF8=self.smtputf8,
            ssl_context=context if self.security == "tls" else None,
            tls_context=context if self.security == "starttls" else None,
            require_starttls=self.require_starttls and self.security == "starttls",
            # aiosmtpd only counts STARTTLS as TLS; with implicit TLS the session is encrypted anyway.
            auth_require_tls=self.auth_require_tls and self.security != "tls",
            # handle_MAIL enforces auth_required: aiosmtpd warns when it is set without auth_require_tls
            auth_required=False,
            authenticator=handler.check_password,
            auth_exclude_mechanism=self._excluded_mechanisms(),
            data_size_limit=self.data_size_limit,
        )

    def _excluded_mechanisms(self) -> list[str]:
        """AUTH mechanisms not to advertise for this configuration."""
        excluded = [] if self.xoauth2_tokens is not None else ["XOAUTH2"]
        if not self.users and self.xoauth2_tokens is not None:
            excluded += ["PLAIN", "LOGIN"]
        return excluded
