"""The Test action over SMTP, shared by every SMTP route: each phase of a real send as a named step.

It runs on a connection of its own (never a cached session) so that every step, from name
resolution to the final reply, is exercised and reported.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Iterable

from workers import diagnosis
from workers.diagnosis import AUTHENTICATION, CAPABILITIES, SEND, SENDER, TLS, Checkup
from workers.transports import smtp_session, tls
from workers.transports.base import Envelope, Outcome, TransportFailure
from workers.transports.smtp_session import Authenticator, Endpoint, words

GREETING_TIMEOUT = 10.0  # a server that says nothing this long is not speaking SMTP in clear on this port
IMPLICIT_TLS_PORT, SUBMISSION_PORT = 465, 587


def diagnose(checkup: Checkup, endpoint: Endpoint, auth: Authenticator | None, envelope: Envelope,
             allow: Iterable = ()) -> None:
    """Resolve, connect, secure, greet, log in and send envelope, one recorded step at a time."""
    context = diagnosis.trust(checkup, endpoint.ca_file, endpoint.verify) if endpoint.security != "none" else None
    sock = diagnosis.connect(checkup, endpoint.host, endpoint.port, allow=allow, timeout=endpoint.timeout)
    if endpoint.security == "tls":
        sock = diagnosis.secure(checkup, sock, endpoint.host, endpoint.port, context)
    smtp = smtplib.SMTP(timeout=endpoint.timeout)
    smtp.sock, smtp._host = sock, endpoint.host  # smtplib checks the certificate against _host on STARTTLS
    try:
        _greeting(checkup, smtp, endpoint)
        if endpoint.security == "starttls":
            _starttls(checkup, smtp, endpoint, context)
        _login(checkup, smtp, auth)
        _send(checkup, smtp, endpoint, envelope)
    finally:
        smtp_session.quit_quietly(smtp)


def _greeting(checkup: Checkup, smtp: smtplib.SMTP, endpoint: Endpoint) -> None:
    """The 220 greeting and EHLO, named as the server's capabilities."""
    smtp.sock.settimeout(min(endpoint.timeout, GREETING_TIMEOUT))
    try:
        code, text = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        checkup.failed(CAPABILITIES, f"no SMTP greeting from {endpoint.host}:{endpoint.port} "
                                     f"({type(exc).__name__})", _silent_server_advice(endpoint))
    smtp.sock.settimeout(endpoint.timeout)
    if code != 220:
        checkup.failed(CAPABILITIES, f"the server greets with {words(code, text)}",
                       "the server refuses connections from this host; ask its administrator")
    _ehlo(checkup, smtp, endpoint)


def _silent_server_advice(endpoint: Endpoint) -> str:
    if endpoint.port == IMPLICIT_TLS_PORT and endpoint.security != "tls":
        return f"port {IMPLICIT_TLS_PORT} expects implicit TLS: set security to `tls`, or use port " \
               f"{SUBMISSION_PORT} with `starttls`"
    if endpoint.security != "tls":
        return "this port waits for the client to speak first, as an implicit-TLS port does: set security " \
               "to `tls`, or use the server's SMTP submission port"
    return "check that this port is the server's SMTP port"


def _ehlo(checkup: Checkup, smtp: smtplib.SMTP, endpoint: Endpoint) -> None:
    with checkup.step(CAPABILITIES, "the server does not accept EHLO or HELO from this host") as note:
        try:
            smtp_session.ehlo(smtp)
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportFailure(Outcome.TRANSIENT, f"EHLO failed: {type(exc).__name__}") from None
        offered = sorted(name.upper() + (f" {args.strip()}" if args.strip() else "") for name, args in smtp.esmtp_features.items())
        note.detail = f"{endpoint.host} offers: {', '.join(offered) or 'nothing (HELO only)'}"


def _starttls(checkup: Checkup, smtp: smtplib.SMTP, endpoint: Endpoint, context: ssl.SSLContext) -> None:
    if not smtp.has_extn("starttls"):
        checkup.failed(TLS, f"{endpoint.host}:{endpoint.port} does not offer STARTTLS",
                       "the settings require STARTTLS: use the server's submission port (usually 587), or "
                       "security `tls` with its implicit-TLS port (usually 465)")
    try:
        code, text = smtp.starttls(context=context)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        checkup.failed(TLS, *tls.problem(endpoint.host, endpoint.port, exc))
    except (smtplib.SMTPException, OSError) as exc:
        checkup.failed(TLS, f"STARTTLS failed: {type(exc).__name__}: {exc}", "check the server's TLS set-up")
    if code != 220:
        checkup.failed(TLS, f"STARTTLS refused: {words(code, text)}", "check the server's TLS set-up")
    checkup.passed(TLS, f"STARTTLS, {smtp.sock.version()}, " + (
        f"certificate of {endpoint.host} verified" if endpoint.verify else "certificate NOT verified"))
    _ehlo(checkup, smtp, endpoint)


def _login(checkup: Checkup, smtp: smtplib.SMTP, auth: Authenticator | None) -> None:
    if auth is None:
        checkup.passed(AUTHENTICATION, "none configured")
        return
    with checkup.step(AUTHENTICATION, _login_advice) as note:
        auth.login(smtp)
        note.detail = "accepted"


def _login_advice(failure: TransportFailure) -> str:
    """What to change after a refused login, by the server's words."""
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


def sender_advice(failure: TransportFailure, sender: str) -> str:
    """What to change after MAIL FROM was refused: a login the server wants first, or the from address."""
    text = failure.detail.lower()
    if "530" in text or "authentication required" in text or "5.7.0" in text and "auth" in text:
        return "the server wants a login before it takes mail: set auth to plain or login with a username and " \
               "password (auth is none), and security to starttls or tls if the server offers AUTH only there"
    return f"the account may not send as {sender}: use its own address as the from address, or give it the " \
           "right to send as this address"


def _send(checkup: Checkup, smtp: smtplib.SMTP, endpoint: Endpoint, envelope: Envelope) -> None:
    with checkup.step(SENDER, lambda failure: sender_advice(failure, envelope.sender)) as note:
        note.detail = f"{envelope.sender} accepted: {smtp_session.mail_from(smtp, envelope)}"
    with checkup.step(SEND) as note:
        delivered = smtp_session.deliver(smtp, envelope, endpoint.final_reply_timeout)
        note.detail = f"accepted for {', '.join(envelope.recipients)}: {delivered.detail}"
        if delivered.refused or delivered.deferred:
            note.detail += "; refused: " + "; ".join(f"{a}: {r}" for a, r in
                                                      {**delivered.refused, **delivered.deferred}.items())

