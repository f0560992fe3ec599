"""Plain SMTP with STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, over reused connections."""

from __future__ import annotations

import smtplib
from typing import Iterable

from deskmail.workers.constants import MailService
from deskmail.workers.scrub import scrubbed
from deskmail.workers.service_settings import ExchangeOAuth2Settings, GmailSettings, SmtpSettings
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import smtp_session
from deskmail.workers.transports.steps import Recorder
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure
from deskmail.workers.transports.sessions import SessionCache


def endpoint_of(smtp: SmtpSettings, final_reply_timeout: float) -> smtp_session.Endpoint:
    """The SMTP endpoint described by the `smtp` settings."""
    return smtp_session.Endpoint(
        host=smtp.host, port=int(smtp.port), security=smtp.security, verify=smtp.verify_certificate,
        ca_file=smtp.ca_file, timeout=float(smtp.timeout_seconds), final_reply_timeout=final_reply_timeout)


def submission_endpoint(service: GmailSettings | ExchangeOAuth2Settings,
                        final_reply_timeout: float) -> smtp_session.Endpoint:
    """The provider's STARTTLS submission endpoint (`smtp_host`, `smtp_port`), for the OAuth2 services."""
    return smtp_session.Endpoint(
        host=service.smtp_host, port=int(service.smtp_port), security="starttls", ca_file=service.ca_file,
        timeout=float(service.timeout_seconds), final_reply_timeout=final_reply_timeout)


def authenticator_of(smtp: SmtpSettings) -> smtp_session.Authenticator | None:
    """PLAIN or LOGIN with the username and password, or None for `auth: none`."""
    if smtp.auth == "none" or not smtp.username:
        return None
    return smtp_session.PasswordAuth(smtp.auth, smtp.username, smtp.password or "")


class SmtpSender:
    """Sends envelopes over cached sessions; shared by every SMTP-speaking transport."""

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.allow = tuple(allow)
        self.final_reply_timeout = final_reply_timeout
        self.sessions: SessionCache[smtplib.SMTP] = SessionCache(smtp_session.quit_quietly)

    def send(self, key: tuple, endpoint: smtp_session.Endpoint,
             auth: smtp_session.Authenticator | None, envelope: Envelope) -> Delivered:
        """Send over the cached session for key; a reused session found dead is replaced once."""
        opener = lambda: smtp_session.open_session(endpoint, auth, self.allow)  # noqa: E731
        for attempt in (1, 2):
            smtp, reused = self.sessions.get(key, opener)
            try:
                return smtp_session.transmit(smtp, envelope, endpoint.final_reply_timeout)
            except TransportFailure as exc:
                if exc.outcome is not Outcome.PERMANENT:  # a permanent refusal leaves the session reset
                    self.sessions.discard(key)
                raise
            except OSError as exc:  # smtplib's own errors are OSErrors too
                self.sessions.discard(key)
                if not reused or attempt == 2 or isinstance(exc, TimeoutError):
                    raise TransportFailure(Outcome.TRANSIENT,
                                           f"connection lost before the end of DATA: {exc}") from exc
            except BaseException:
                # Anything else left the exchange half-way (a command half-written, a MAIL without its end):
                # the session is closed, never handed to the next mail.
                self.sessions.discard(key)
                raise
        raise AssertionError("unreachable")

    def test(self, endpoint: smtp_session.Endpoint, auth: smtp_session.Authenticator | None, envelope: Envelope,
             steps: Recorder) -> Delivered:
        """The Test action: the same exchange as send, on a connection of its own, every step reported."""
        smtp = smtp_session.open_session(endpoint, auth, self.allow, steps)
        try:
            return smtp_session.transmit(smtp, envelope, endpoint.final_reply_timeout, steps)
        finally:
            smtp_session.quit_quietly(smtp)


class SmtpTransport(Transport):
    """The `smtp` mail service."""

    service = MailService.SMTP

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.sender = SmtpSender(allow, final_reply_timeout)

    @scrubbed
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver over the project's SMTP server."""
        smtp = settings.typed_as(SmtpSettings)
        endpoint = endpoint_of(smtp, self.sender.final_reply_timeout)
        return self.sender.send((settings.key, settings.version), endpoint, authenticator_of(smtp), envelope)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Recorder) -> None:
        """The Test action over the project's SMTP server, on a connection of its own."""
        smtp = settings.typed_as(SmtpSettings)
        self.sender.test(endpoint_of(smtp, self.sender.final_reply_timeout), authenticator_of(smtp), envelope,
                         checkup)

    def close(self) -> None:
        """Close this thread's sessions."""
        self.sender.sessions.clear()
