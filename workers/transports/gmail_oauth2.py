"""Google Workspace / Gmail: SMTP with XOAUTH2 to smtp.gmail.com:587 (STARTTLS), tokens from google-auth."""

from __future__ import annotations

from typing import Iterable

from deskmail.workers.constants import MailService
from deskmail.workers.scrub import scrubbed
from deskmail.workers.service_settings import GmailSettings
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import smtp_session
from deskmail.workers.transports.steps import TOKEN, Recorder
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure
from deskmail.workers.transports.google_tokens import GoogleTokens, token_advice
from deskmail.workers.transports.smtp import SmtpSender, submission_endpoint


MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # Gmail's cap on one mail's attachments together (its SIZE is larger)


def check_gmail_cap(envelope: Envelope) -> None:
    """Gmail refuses attachments over 25 MB together: fail before connecting, with the sizes."""
    if envelope.attachment_bytes > MAX_ATTACHMENT_BYTES:
        raise TransportFailure(Outcome.PERMANENT, f"the attachments are {envelope.attachment_bytes} bytes together, "
                                                  f"over Gmail's cap of {MAX_ATTACHMENT_BYTES} bytes per mail")



class GmailOAuth2Transport(Transport):
    """The `gmail_oauth2` mail service."""

    service = MailService.GMAIL_OAUTH2

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.sender = SmtpSender(allow, final_reply_timeout)
        self.tokens = GoogleTokens(self.sender.allow)

    @scrubbed
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver over Gmail's SMTP with a bearer token for the sender."""
        check_gmail_cap(envelope)
        gmail = settings.typed_as(GmailSettings)
        key = (settings.key, settings.version)
        auth = smtp_session.XOAuth2(gmail.sender, self.tokens.source(key, gmail))
        return self.sender.send(key, self._endpoint(gmail), auth, envelope)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Recorder) -> None:
        """The Test action: a fresh token from Google, then the SMTP steps on a connection of its own."""
        gmail = settings.typed_as(GmailSettings)
        tokens, key = GoogleTokens(self.sender.allow), (settings.key, "test")
        source = tokens.source(key, gmail)
        with checkup.step(TOKEN, token_advice) as note:
            source.token()
            note.detail = f"access token for {gmail.sender} from {gmail.token_uri}"
        self.sender.test(self._endpoint(gmail), smtp_session.XOAuth2(gmail.sender, source), envelope, checkup)

    def _endpoint(self, gmail: GmailSettings) -> smtp_session.Endpoint:
        return submission_endpoint(gmail, self.sender.final_reply_timeout)

    def close(self) -> None:
        """Close this thread's sessions."""
        self.sender.sessions.clear()
