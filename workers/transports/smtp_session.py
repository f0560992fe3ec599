"""The SMTP client shared by the SMTP, Gmail and Exchange-over-SMTP transports.

Each phase of the exchange is explicit so that a failure is classified by where it happened:
before the end of DATA nothing was delivered (retry is safe), after it the mail is ambiguous.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NoReturn, Protocol

from schemas.addresses import ascii_domain_form
from workers.transports import netpolicy, phase, tls
from workers.transports.base import Delivered, Envelope, Outcome, TransportFailure

QUOTA_MARKERS = ("5.4.5", "4.5.3", "submissionquotaexceeded", "daily user sending limit",
                 "sending limit exceeded", "quota exceeded")
CONFIG_CODES = {530, 534, 535, 538}
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


def classify(code: int, text: str) -> Outcome:
    """The outcome class of an SMTP reply that is not a success."""
    lowered = text.lower()
    if any(marker in lowered for marker in QUOTA_MARKERS):
        return Outcome.QUOTA
    if code in CONFIG_CODES or "5.7.30" in lowered or "5.7.8" in lowered or "5.7.57" in lowered:
        return Outcome.CONFIGURATION
    return Outcome.TRANSIENT if 400 <= code < 500 else Outcome.PERMANENT


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The endpoint's verifying (or, if configured so, non-verifying) TLS context."""
    return tls.context(endpoint.ca_file, endpoint.verify)


class _Checked:
    """Mixin: smtplib connects to an address the outbound policy checked, not to what DNS says later."""

    allow: tuple = ()

    def _get_socket(self, host, port, timeout):  # noqa: ANN001 - smtplib's signature
        sock = netpolicy.connect(host, port, self.allow, timeout)
        if isinstance(self, smtplib.SMTP_SSL):
            return self.context.wrap_socket(sock, server_hostname=host)
        return sock


class _SMTP(_Checked, smtplib.SMTP):
    pass


class _SMTPS(_Checked, smtplib.SMTP_SSL):
    pass


def _tls_failure(endpoint: Endpoint, exc: ssl.SSLError | ssl.CertificateError) -> TransportFailure:
    what, change = tls.problem(endpoint.host, endpoint.port, exc)
    return TransportFailure(Outcome.CONFIGURATION, f"{what}; {change}")


def open_session(endpoint: Endpoint, auth: Authenticator | None, allow: Iterable = ()) -> smtplib.SMTP:
    """Connect, greet, secure (TLS required when configured) and log in."""
    cls = _SMTPS if endpoint.security == "tls" else _SMTP
    kwargs = {"context": tls_context(endpoint)} if endpoint.security == "tls" else {}
    smtp = cls(timeout=endpoint.timeout, **kwargs)
    smtp.allow = tuple(allow)
    smtp._host = endpoint.host  # smtplib verifies the certificate against _host, set only by __init__
    try:
        code, text = smtp.connect(endpoint.host, endpoint.port)
        if code != 220:
            raise TransportFailure(classify(code, words(code, text)), f"greeting: {words(code, text)}")
        ehlo(smtp)
        if endpoint.security == "starttls":
            _starttls(smtp, endpoint)
        if auth is not None:
            auth.login(smtp)
        return smtp
    except TransportFailure:
        _quietly_close(smtp)
        raise
    except (ssl.SSLError, ssl.CertificateError) as exc:
        _quietly_close(smtp)
        raise _tls_failure(endpoint, exc) from exc
    except (smtplib.SMTPException, OSError) as exc:
        _quietly_close(smtp)
        raise _connection_failure(endpoint, exc) from exc


def _connection_failure(endpoint: Endpoint, exc: BaseException) -> TransportFailure:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        hint = " (port 465 expects implicit TLS: use security `tls`)" if endpoint.port == 465 and \
            endpoint.security != "tls" else ""
        return TransportFailure(Outcome.TRANSIENT, f"{endpoint.host}:{endpoint.port} did not answer in time{hint}")
    return TransportFailure(Outcome.TRANSIENT, f"connection to {endpoint.host}:{endpoint.port} lost: "
                                               f"{type(exc).__name__}: {exc}")


def ehlo(smtp: smtplib.SMTP) -> None:
    """EHLO, falling back to HELO."""
    code, text = smtp.ehlo()
    if code != 250:
        code, text = smtp.helo()
        if code != 250:
            raise TransportFailure(classify(code, words(code, text)), f"EHLO/HELO refused: {words(code, text)}")


def _starttls(smtp: smtplib.SMTP, endpoint: Endpoint) -> None:
    if not smtp.has_extn("starttls"):
        raise TransportFailure(Outcome.CONFIGURATION,
                               f"{endpoint.host}:{endpoint.port} does not offer STARTTLS, which the settings "
                               "require; fix the server or choose another port or security")
    code, text = smtp.starttls(context=tls_context(endpoint))
    if code != 220:
        raise TransportFailure(Outcome.CONFIGURATION, f"STARTTLS refused: {words(code, text)}")
    ehlo(smtp)


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
            raise TransportFailure(Outcome.CONFIGURATION,
                                   f"authentication as {self.username!r} refused: {words(exc.smtp_code, exc.smtp_error)}") \
                from None
        except smtplib.SMTPNotSupportedError:
            raise TransportFailure(Outcome.CONFIGURATION,
                                   "the server does not offer AUTH here (is TLS required first?)") from None
        finally:
            smtp.password = ""


class XOAuth2:
    """AUTH XOAUTH2 with a bearer token from a token source; a refusal drops the token once."""

    def __init__(self, user: str, token: Callable[[], str], drop: Callable[[], None]) -> None:
        self.user, self._token, self._drop = user, token, drop

    def login(self, smtp: smtplib.SMTP) -> None:
        """Authenticate with the cached token, and with a fresh one if the server refuses it."""
        for attempt in (1, 2):
            code, text = self._try(smtp, self._token())
            if code == 235:
                return
            self._drop()
            if attempt == 2 or code not in (535, 334, 454):
                raise TransportFailure(Outcome.CONFIGURATION,
                                       f"XOAUTH2 as {self.user!r} refused: {words(code, text)}")

    def _try(self, smtp: smtplib.SMTP, token: str) -> tuple[int, bytes]:
        blob = base64.b64encode(f"user={self.user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        code, text = smtp.docmd("AUTH", "XOAUTH2 " + blob)
        if code == 334:  # the JSON error challenge: answer empty, the server then says 535
            code, text = smtp.docmd("")
        return code, text


def transmit(smtp: smtplib.SMTP, envelope: Envelope, final_reply_timeout: float) -> Delivered:
    """MAIL, RCPT each, DATA: classified by phase; only a lost final reply is ambiguous."""
    mail_from(smtp, envelope)
    return deliver(smtp, envelope, final_reply_timeout)


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


def mail_from(smtp: smtplib.SMTP, envelope: Envelope) -> str:
    """MAIL FROM (with SIZE when the server offers it); a refused sender is the project's settings, not the mail.

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
    code, text = smtp.mail(sender, options)
    if code != 250:
        smtp.rset()
        outcome = classify(code, words(code, text))
        if outcome is Outcome.PERMANENT:
            outcome = Outcome.CONFIGURATION
        raise TransportFailure(outcome, f"sender {envelope.sender} refused: {words(code, text)}")
    return words(code, text)


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


def deliver(smtp: smtplib.SMTP, envelope: Envelope, final_reply_timeout: float) -> Delivered:
    """RCPT for each recipient, then DATA, after a MAIL FROM the server took."""
    refused, deferred = _recipients(smtp, envelope.recipients)
    if len(refused) + len(deferred) == len(envelope.recipients):
        smtp.rset()
        return _all_refused(refused, deferred)
    phase.before_data()
    return Delivered(_data(smtp, envelope.data, final_reply_timeout), refused, deferred)


def _recipients(smtp: smtplib.SMTP, recipients: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """RCPT for each (domain as punycode unless the server takes UTF-8); refusals keyed by the address as given.

    An authentication answer to a RCPT (535, `550 5.7.30` Basic authentication retired, 530) is about the
    account, not the recipient: the whole mail fails as a configuration error.
    """
    refused: dict[str, str] = {}
    deferred: dict[str, str] = {}
    utf8 = smtp.has_extn("smtputf8")
    for address in recipients:
        code, text = smtp.rcpt(address if utf8 else ascii_domain_form(address))
        if code in (250, 251):
            continue
        reply = words(code, text)
        if classify(code, reply) is Outcome.CONFIGURATION:
            raise TransportFailure(Outcome.CONFIGURATION, f"recipient {address} refused for the account: {reply}")
        (deferred if 400 <= code < 500 else refused)[address] = reply
    return refused, deferred


def _all_refused(refused: dict[str, str], deferred: dict[str, str]) -> Delivered:
    replies = {**refused, **deferred}
    summary = "; ".join(f"{a}: {r}" for a, r in list(replies.items())[:5])
    if any(classify(int(r[:3]), r) is Outcome.QUOTA for r in replies.values()):
        raise TransportFailure(Outcome.QUOTA, f"every recipient refused: {summary}", refused=refused)
    outcome = Outcome.TRANSIENT if deferred else Outcome.PERMANENT
    raise TransportFailure(outcome, f"every recipient refused: {summary}", refused=refused)


def _data(smtp: smtplib.SMTP, data: bytes, final_reply_timeout: float) -> str:
    code, text = smtp.docmd("DATA")
    if code != 354:
        smtp.rset()
        raise TransportFailure(classify(code, words(code, text)), f"DATA refused: {words(code, text)}")
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
        raise TransportFailure(classify(code, words(code, text)), f"message refused: {words(code, text)}")
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
