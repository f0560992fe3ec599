"""The one SMTP client of the SMTP, Gmail and Exchange-over-SMTP transports, for sends and the Test action.

Each phase of the exchange is explicit so that a failure is classified by where it happened:
before the end of DATA nothing was delivered (retry is safe), after it the mail is ambiguous.
Every phase reports to a recorder (workers.transports.steps): a send passes QUIET, the Test action a Checkup,
so both go through the same code and fail the same way, at the same step. Replies are classified by
workers.transports.smtp_replies. With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out as one group.
"""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NoReturn, Protocol

from deskmail.schemas.addresses import ascii_domain_form
from deskmail.workers.transports import phase, probes
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, TransportFailure, advised
from deskmail.workers.transports.smtp_replies import classify, rule_for
from deskmail.workers.transports.tokens import TokenSource
from deskmail.workers.transports.steps import AUTHENTICATION, CAPABILITIES, QUIET, SEND, SENDER, TLS, Recorder

GREETING_TIMEOUT = 10.0  # a server that says nothing this long is not speaking SMTP in clear on this port
IMPLICIT_TLS_PORT, SUBMISSION_PORT = 465, 587
_EOL = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_DOT = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach an SMTP server."""

    host: str
    port: int
    security: str  # none | starttls | tls
    verify: bool = True
    ca_file: str | None = None
    timeout: float = 30.0
    final_reply_timeout: float = 600.0


class Authenticator(Protocol):
    """Logs an open SMTP session in (PLAIN/LOGIN with a password, XOAUTH2 with a token)."""

    def login(self, smtp: smtplib.SMTP) -> None: ...


def words(code: int, text: bytes | str) -> str:
    """A server reply as one line of text for the ledger."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def refusal(code: int, text: bytes | str, problem: str, outcome: Outcome | None = None) -> TransportFailure:
    """The failure for a refusing reply: its table row's outcome (unless the phase says better) and advice."""
    said = words(code, text)
    rule = rule_for(code, said)
    return advised(outcome or rule.outcome, f"{problem}: {said}", rule.advice)


@contextmanager
def _lost(endpoint: Endpoint, during: str) -> Iterator[None]:
    """A connection that broke during a phase before DATA: transient, nothing can have been delivered."""
    try:
        yield
    except TransportFailure:
        raise
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportFailure(Outcome.TRANSIENT, f"connection to {endpoint.host}:{endpoint.port} lost during "
                                                  f"{during}: {type(exc).__name__}: {exc}") from exc


def open_session(endpoint: Endpoint, auth: Authenticator | None, allow: Iterable = (),
                 steps: Recorder = QUIET) -> smtplib.SMTP:
    """Resolve, connect, secure (TLS required when configured), greet and log in, each phase a step."""
    context = probes.trust(steps, endpoint.ca_file, endpoint.verify) if endpoint.security != "none" else None
    sock = probes.connect(steps, endpoint.host, endpoint.port, allow=allow, timeout=endpoint.timeout)
    if endpoint.security == "tls":
        assert context is not None
        sock = probes.secure(steps, sock, endpoint.host, endpoint.port, context)
    smtp = smtplib.SMTP(timeout=endpoint.timeout)  # no host given: it connects nowhere by itself
    smtp.sock = sock
    # smtplib checks the certificate against _host on STARTTLS; connect() would set it, and typeshed omits it
    smtp._host = endpoint.host  # type: ignore[attr-defined]
    try:
        _greeting(steps, smtp, endpoint)
        if endpoint.security == "starttls":
            assert context is not None
            _starttls(steps, smtp, endpoint, context)
        _login(steps, smtp, endpoint, auth)
        return smtp
    except BaseException:
        _quietly_close(smtp)
        raise


def _greeting(steps: Recorder, smtp: smtplib.SMTP, endpoint: Endpoint) -> None:
    """The 220 greeting and EHLO, named as the server's capabilities."""
    sock = smtp.sock
    assert sock is not None  # open_session connects it first
    sock.settimeout(min(endpoint.timeout, GREETING_TIMEOUT))
    try:
        code, text = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        steps.failed_with(CAPABILITIES, advised(
            Outcome.TRANSIENT, f"no SMTP greeting from {endpoint.host}:{endpoint.port} ({type(exc).__name__})",
            _silent_server_advice(endpoint)))
    sock.settimeout(endpoint.timeout)
    if code != 220:
        failure = refusal(code, text, "the server greets with")
        failure.advice = failure.advice or "the server refuses connections from this host; ask its administrator"
        steps.failed_with(CAPABILITIES, failure)
    _ehlo(steps, smtp, endpoint)


def _silent_server_advice(endpoint: Endpoint) -> str:
    if endpoint.port == IMPLICIT_TLS_PORT and endpoint.security != "tls":
        return f"port {IMPLICIT_TLS_PORT} expects implicit TLS: set security to `tls`, or use port " \
               f"{SUBMISSION_PORT} with `starttls`"
    if endpoint.security != "tls":
        return "this port waits for the client to speak first, as an implicit-TLS port does: set security " \
               "to `tls`, or use the server's SMTP submission port"
    return "check that this port is the server's SMTP port"


def _ehlo(steps: Recorder, smtp: smtplib.SMTP, endpoint: Endpoint) -> None:
    with steps.step(CAPABILITIES, "the server does not accept EHLO or HELO from this host") as note:
        with _lost(endpoint, "EHLO"):
            ehlo(smtp)
        if steps.recording:
            offered = sorted(name.upper() + (f" {args.strip()}" if args.strip() else "")
                             for name, args in smtp.esmtp_features.items())
            note.detail = f"{endpoint.host} offers: {', '.join(offered) or 'nothing (HELO only)'}"


def ehlo(smtp: smtplib.SMTP) -> None:
    """EHLO, falling back to HELO."""
    code, text = smtp.ehlo()
    if code != 250:
        code, text = smtp.helo()
        if code != 250:
            raise refusal(code, text, "EHLO/HELO refused")


def _starttls(steps: Recorder, smtp: smtplib.SMTP, endpoint: Endpoint, context: ssl.SSLContext) -> None:
    if not smtp.has_extn("starttls"):
        steps.failed_with(TLS, advised(
            Outcome.CONFIGURATION, f"{endpoint.host}:{endpoint.port} does not offer STARTTLS, which the settings "
                                   "require",
            "use the server's submission port (usually 587), or security `tls` with its implicit-TLS port "
            "(usually 465)"))
    try:
        smtp.starttls(context=context)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        steps.failed_with(TLS, probes.tls_failure(endpoint.host, endpoint.port, exc))
    except smtplib.SMTPResponseException as exc:
        steps.failed_with(TLS, advised(Outcome.CONFIGURATION,
                                       f"STARTTLS refused: {words(exc.smtp_code, exc.smtp_error)}",
                                       "check the server's TLS set-up"))
    except (smtplib.SMTPException, OSError) as exc:
        steps.failed_with(TLS, advised(Outcome.TRANSIENT, f"STARTTLS failed: {type(exc).__name__}: {exc}",
                                       "check the server's TLS set-up"))
    assert isinstance(smtp.sock, ssl.SSLSocket)  # starttls() wrapped it
    steps.passed(TLS, f"STARTTLS, {smtp.sock.version()}, " + (
        f"certificate of {endpoint.host} verified" if endpoint.verify else "certificate NOT verified"))
    _ehlo(steps, smtp, endpoint)


def _login(steps: Recorder, smtp: smtplib.SMTP, endpoint: Endpoint, auth: Authenticator | None) -> None:
    if auth is None:
        steps.passed(AUTHENTICATION, "none configured")
        return
    with steps.step(AUTHENTICATION, login_advice) as note:
        with _lost(endpoint, "AUTH"):
            auth.login(smtp)
        note.detail = "accepted"


def login_advice(failure: TransportFailure) -> str:
    """What to change after a refused login, by the server's words (when its table row gave no advice)."""
    text = failure.detail.lower()
    if "5.7.30" in text or "basic auth" in text:
        return "the provider no longer accepts passwords (Basic authentication) here: use the exchange_oauth2 " \
               "service for Microsoft 365, or OAuth2 for this provider"
    if "xoauth2" in text:
        return "the token was refused for this sender: check that the sender is the mailbox the token is for, " \
               "and that the app may send as it (Gmail: domain-wide delegation for https://mail.google.com/; " \
               "Microsoft 365: SMTP.SendAsApp and the mailbox's service principal)"
    if "does not offer auth" in text:
        return "the server offers no AUTH on this connection: use STARTTLS or TLS, or set auth to `none` if " \
               "the server relays without login"
    return "check username and password (some providers need an app password for SMTP), and the auth mechanism"


class PasswordAuth:
    """AUTH PLAIN or LOGIN with a username and password."""

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        self.mechanism, self.username, self.password = mechanism.upper(), username, password

    def login(self, smtp: smtplib.SMTP) -> None:
        """Authenticate, translating refusals without ever echoing the password."""
        smtp.user, smtp.password = self.username, self.password
        method = smtp.auth_plain if self.mechanism == "PLAIN" else smtp.auth_login
        try:
            smtp.auth(self.mechanism, method, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            raise refusal(exc.smtp_code, exc.smtp_error, f"authentication as {self.username!r} refused",
                          _login_refused(exc.smtp_code)) from None
        except smtplib.SMTPNotSupportedError:
            raise TransportFailure(Outcome.CONFIGURATION,
                                   "the server does not offer AUTH here (is TLS required first?)") from None
        finally:
            smtp.password = ""


def _login_refused(code: int) -> Outcome | None:
    """A permanent refusal of a login is the settings' fault; a temporary one (454 4.7.0) is what its row says."""
    return Outcome.CONFIGURATION if code >= 500 else None


class XOAuth2:
    """AUTH XOAUTH2 with a bearer token from a token source; a refusal drops the token once."""

    def __init__(self, user: str, tokens: TokenSource) -> None:
        self.user, self.tokens = user, tokens

    def login(self, smtp: smtplib.SMTP) -> None:
        """Authenticate with the cached token, and with a fresh one if the server refuses it."""
        for attempt in (1, 2):
            code, text = self._try(smtp, self.tokens.token())
            if code == 235:
                return
            self.tokens.drop()
            if attempt == 2 or code not in (535, 334, 454):
                raise refusal(code, text, f"XOAUTH2 as {self.user!r} refused", _login_refused(code))

    def _try(self, smtp: smtplib.SMTP, token: str) -> tuple[int, bytes]:
        blob = base64.b64encode(f"user={self.user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        code, text = smtp.docmd("AUTH", "XOAUTH2 " + blob)
        if code == 334:  # the JSON error challenge: answer empty, the server then says 535
            code, text = smtp.docmd("")
        return code, text


def transmit(smtp: smtplib.SMTP, envelope: Envelope, final_reply_timeout: float,
             steps: Recorder = QUIET) -> Delivered:
    """MAIL, RCPT each, DATA (as one group when the server offers PIPELINING): classified by phase; only a lost
    final reply is ambiguous."""
    if smtp.has_extn("pipelining"):
        return _pipelined(smtp, envelope, final_reply_timeout, steps)
    with steps.step(SENDER, _sender_advice(envelope)) as note:
        sender, options = mail_parameters(smtp, envelope)
        said = _sender_reply(smtp, envelope, *smtp.mail(sender, options))
        note.detail = f"{envelope.sender} accepted: {said}"
    with steps.step(SEND) as note:
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        for address in envelope.recipients:
            _recipient_reply(address, *smtp.rcpt(_rcpt_form(smtp, address)), refused, deferred)
        delivered = _deliver(smtp, envelope, refused, deferred, final_reply_timeout, _data_command)
        if steps.recording:
            note.detail = _accepted(envelope, delivered)
    return delivered


def _pipelined(smtp: smtplib.SMTP, envelope: Envelope, final_reply_timeout: float, steps: Recorder) -> Delivered:
    """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order; the message itself (and the
    phase hook before it) still waits for the 354."""
    with steps.step(SENDER, _sender_advice(envelope)) as note:
        sender, options = mail_parameters(smtp, envelope)
        group = [f"MAIL FROM:{_path(sender)}" + "".join(f" {o}" for o in options),
                 *(f"RCPT TO:{_path(_rcpt_form(smtp, a))}" for a in envelope.recipients), "DATA"]
        smtp.send("".join(line + "\r\n" for line in group))
        mail_reply = smtp.getreply()
        rcpt_replies = [smtp.getreply() for _ in envelope.recipients]
        data_reply = smtp.getreply()
        try:
            said = _sender_reply(smtp, envelope, *mail_reply, reset=False)
        except TransportFailure:
            _abandon(smtp, data_reply)
            raise
        note.detail = f"{envelope.sender} accepted: {said}"
    with steps.step(SEND) as note:
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        try:
            for address, (code, text) in zip(envelope.recipients, rcpt_replies):
                _recipient_reply(address, code, text, refused, deferred)
        except TransportFailure:
            _abandon(smtp, data_reply)
            raise
        if len(refused) + len(deferred) == len(envelope.recipients):
            _abandon(smtp, data_reply, reset=False)
        delivered = _deliver(smtp, envelope, refused, deferred, final_reply_timeout, lambda _smtp: data_reply)
        if steps.recording:
            note.detail = _accepted(envelope, delivered)
    return delivered


def _abandon(smtp: smtplib.SMTP, data_reply: tuple[int, bytes], reset: bool = True) -> None:
    """End a pipelined group whose message will not be sent: a DATA the server took anyway gets an empty
    message's end (it has no recipient to deliver it to), then the transaction is reset."""
    if data_reply[0] == 354:
        smtp.send(b".\r\n")
        smtp.getreply()
    if reset:
        smtp.rset()


def _accepted(envelope: Envelope, delivered: Delivered) -> str:
    detail = f"accepted for {', '.join(envelope.recipients)}: {delivered.detail}"
    if delivered.refused or delivered.deferred:
        detail += "; refused: " + "; ".join(f"{a}: {r}" for a, r in {**delivered.refused, **delivered.deferred}.items())
    return detail


def _sender_advice(envelope: Envelope) -> Callable[[TransportFailure], str]:
    """What to change after MAIL FROM was refused: a login the server wants first, or the from address."""
    def advice(failure: TransportFailure) -> str:
        text = failure.detail.lower()
        if "530" in text or "authentication required" in text or ("5.7.0" in text and "auth" in text):
            return "the server wants a login before it takes mail: set auth to plain or login with a username and " \
                   "password (auth is none), and security to starttls or tls if the server offers AUTH only there"
        return f"the account may not send as {envelope.sender}: use its own address as the from address, or give " \
               "it the right to send as this address"
    return advice


def size_limit(smtp: smtplib.SMTP) -> int | None:
    """The largest message the server takes (RFC 1870 SIZE), or None when it names no limit."""
    if not smtp.has_extn("size"):
        return None
    try:
        return int(smtp.esmtp_features["size"].split()[0]) or None
    except (ValueError, IndexError):
        return None


def check_size(smtp: smtplib.SMTP, envelope: Envelope) -> None:
    """Refuse a message larger than the server's SIZE before MAIL FROM, so nothing is uploaded in vain."""
    limit = size_limit(smtp)
    size = len(envelope.data)
    if limit is not None and size > limit:
        raise TransportFailure(Outcome.PERMANENT,
                               f"the message is {size} bytes ({envelope.attachment_bytes} bytes of attachments "
                               f"before encoding), over the {limit} bytes {getattr(smtp, '_host', 'the server')} "
                               "takes (SIZE); send smaller or fewer attachments")


def _path(address: str) -> str:
    """An envelope address as a path, as smtplib.quoteaddr writes it for an address admission validated (no
    display name, comment or angle bracket can be in it), without parsing it again for every command."""
    return f"<{address}>"


def mail_parameters(smtp: smtplib.SMTP, envelope: Envelope) -> tuple[str, list[str]]:
    """MAIL FROM's address and parameters (SMTPUTF8, SIZE), decided before anything is said.

    Without SMTPUTF8 at the server, domains go as punycode, and a Unicode local part (or a message whose
    headers need UTF-8) fails the mail before anything is said, so the session stays usable.
    """
    check_size(smtp, envelope)
    if smtp.has_extn("smtputf8"):  # addresses go as given
        utf8 = not envelope.data.isascii() or not all(a.isascii() for a in (envelope.sender, *envelope.recipients))
        sender = envelope.sender
    elif _needs_smtputf8(envelope):
        _refuse_without_smtputf8(envelope)
    else:
        utf8, sender = False, ascii_domain_form(envelope.sender)
    options = (["SMTPUTF8"] if utf8 else []) + ([f"SIZE={len(envelope.data)}"] if smtp.has_extn("size") else [])
    return sender, options


def _sender_reply(smtp: smtplib.SMTP, envelope: Envelope, code: int, text: bytes, reset: bool = True) -> str:
    """MAIL FROM's reply; a refused sender is the project's settings, not the mail."""
    if code == 250:
        return words(code, text)
    if reset:
        smtp.rset()
    outcome = classify(code, words(code, text))
    raise refusal(code, text, f"sender {envelope.sender} refused",
                  Outcome.CONFIGURATION if outcome is Outcome.PERMANENT else outcome)


def _rcpt_form(smtp: smtplib.SMTP, address: str) -> str:
    """A recipient as RCPT names it: the domain as punycode unless the server takes UTF-8."""
    return address if smtp.has_extn("smtputf8") else ascii_domain_form(address)


def _needs_smtputf8(envelope: Envelope) -> bool:
    """True when an address or the message cannot be written in ASCII, even with domains in punycode."""
    addresses = (envelope.sender, *envelope.recipients)
    return not envelope.data.isascii() or not all(ascii_domain_form(a).isascii() for a in addresses)


def _refuse_without_smtputf8(envelope: Envelope) -> NoReturn:
    """The failure of a mail a server without SMTPUTF8 cannot take: naming the addresses at fault."""
    if not ascii_domain_form(envelope.sender).isascii():
        raise TransportFailure(Outcome.CONFIGURATION,
                               f"the sender {envelope.sender} has a non-ASCII local part and the server does "
                               "not offer SMTPUTF8; use an ASCII from address for this server")
    unicode = [a for a in envelope.recipients if not ascii_domain_form(a).isascii()]
    named = ", ".join(unicode[:5]) + (f" and {len(unicode) - 5} more" if len(unicode) > 5 else "")
    raise TransportFailure(Outcome.PERMANENT,
                           f"the server does not offer SMTPUTF8, which the non-ASCII local part of "
                           f"{named or 'an address in the headers'} needs; the mail was not sent",
                           refused={a: "non-ASCII local part; the server does not offer SMTPUTF8"
                                    for a in unicode})


def _recipient_reply(address: str, code: int, text: bytes, refused: dict[str, str], deferred: dict[str, str]) -> None:
    """One RCPT's reply, keyed by the address as given.

    An authentication answer to a RCPT (535, `550 5.7.30` Basic authentication retired, 530) is about the
    account, not the recipient: the whole mail fails as a configuration error.
    """
    if code in (250, 251):
        return
    reply = words(code, text)
    if classify(code, reply) is Outcome.CONFIGURATION:
        raise refusal(code, text, f"recipient {address} refused for the account")
    (deferred if 400 <= code < 500 else refused)[address] = reply


def _deliver(smtp: smtplib.SMTP, envelope: Envelope, refused: dict[str, str], deferred: dict[str, str],
             final_reply_timeout: float, data_command: Callable[[smtplib.SMTP], tuple[int, bytes]]) -> Delivered:
    """After the RCPTs: all refused -> RSET and fail; else DATA, the phase hook, the message."""
    if len(refused) + len(deferred) == len(envelope.recipients):
        smtp.rset()
        _all_refused(refused, deferred)
    code, text = data_command(smtp)
    if code != 354:
        smtp.rset()
        raise refusal(code, text, "DATA refused")
    return Delivered(_message(smtp, envelope.data, final_reply_timeout), refused, deferred)


def _data_command(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    return smtp.docmd("DATA")


def _all_refused(refused: dict[str, str], deferred: dict[str, str]) -> NoReturn:
    replies = {**refused, **deferred}
    summary = "; ".join(f"{a}: {r}" for a, r in list(replies.items())[:5])
    if any(classify(int(r[:3]), r) is Outcome.QUOTA for r in replies.values()):
        raise TransportFailure(Outcome.QUOTA, f"every recipient refused: {summary}", refused=refused)
    outcome = Outcome.TRANSIENT if deferred else Outcome.PERMANENT
    raise TransportFailure(outcome, f"every recipient refused: {summary}", refused=refused)


def _message(smtp: smtplib.SMTP, data: bytes, final_reply_timeout: float) -> str:
    """The message after a 354, dot-stuffed, and the server's final reply.

    The phase hook runs here, after the 354 and before the first byte of the message: from the end of
    the message on, the server may have taken it. If the hook refuses, the connection is closed before
    the message's end, so the server drops the unfinished message and nothing can have been delivered.
    """
    try:
        phase.before_data()
    except TransportFailure:
        smtp.close()
        raise
    payload = _DOT.sub(b"..", _EOL.sub(b"\r\n", data))
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    try:
        smtp.send(payload + b".\r\n")
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise TransportFailure(Outcome.TRANSIENT, f"connection lost while sending the message: {exc}") from exc
    return _final_reply(smtp, final_reply_timeout)


def _final_reply(smtp: smtplib.SMTP, final_reply_timeout: float) -> str:
    sock = smtp.sock
    previous = sock.gettimeout() if sock else None
    started = time.monotonic()
    try:
        if sock:
            sock.settimeout(final_reply_timeout)
        code, text = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        waited = time.monotonic() - started
        if _was_reset(exc):
            # A reset, not a close: Linux answers with RST when a socket is closed while received data is still
            # unread, so the server stopped before it had read the whole message and its final "." — it cannot
            # have taken the mail, and sending it again is safe. A clean close (FIN) or silence after the "."
            # says nothing of the kind: the server may have read everything and queued the mail before going
            # away, so that stays ambiguous. (We send nothing while we wait, so no firewall that forgot the
            # connection has a packet of ours to answer with a reset.)
            raise TransportFailure(Outcome.TRANSIENT,
                                   f"connection reset before the server read the whole message ({waited:.0f} s "
                                   "after the end of DATA); it did not take the mail") from exc
        raise TransportFailure(Outcome.AMBIGUOUS,
                               f"no reply after the end of DATA ({type(exc).__name__} after {waited:.0f} s); "
                               "the server may or may not have taken the mail") from exc
    finally:
        if sock and smtp.sock is sock:
            sock.settimeout(previous)
    if code != 250:
        raise refusal(code, text, "message refused")
    return words(code, text)


def _was_reset(exc: BaseException) -> bool:
    """True when a ConnectionResetError is behind exc (smtplib turns it into SMTPServerDisconnected)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ConnectionResetError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _quietly_close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
        pass


def quit_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT if the connection still answers, close in any case."""
    try:
        smtp.quit()
    except Exception:  # noqa: BLE001
        _quietly_close(smtp)
