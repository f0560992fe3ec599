"""Google Workspace / Gmail: SMTP with XOAUTH2 to smtp.gmail.com:587 (STARTTLS), tokens from google-auth."""

from __future__ import annotations

from typing import Iterable

from workers.constants import MailService
from workers.scrub import scrubbed
from workers.settings import ProjectSettings
from workers.diagnosis import TOKEN, Checkup
from workers.transports import smtp_checkup, smtp_session
from workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure
from workers.transports.google_tokens import DEFAULT_TOKEN_URI, GoogleTokens, token_advice
from workers.transports.smtp import SmtpSender, submission_endpoint


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
        block = settings.block()
        key = (settings.key, settings.version)
        auth = smtp_session.XOAuth2(block["sender"], lambda: self.tokens.token(key, block),
                                    lambda: self.tokens.drop(key))
        return self.sender.send(key, self._endpoint(block), auth, envelope)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Checkup) -> None:
        """The Test action: a fresh token from Google, then the SMTP steps on a connection of its own."""
        block = settings.block()
        tokens, key = GoogleTokens(self.sender.allow), (settings.key, "test")
        with checkup.step(TOKEN, token_advice) as note:
            tokens.token(key, block)
            note.detail = f"access token for {block['sender']} from {block.get('token_uri') or DEFAULT_TOKEN_URI}"
        auth = smtp_session.XOAuth2(block["sender"], lambda: tokens.token(key, block), lambda: None)
        smtp_checkup.diagnose(checkup, self._endpoint(block), auth, envelope, self.sender.allow)

    def _endpoint(self, block: dict) -> smtp_session.Endpoint:
        return submission_endpoint(block, "smtp.gmail.com", self.sender.final_reply_timeout)

    def close(self) -> None:
        """Close this thread's sessions."""
        self.sender.sessions.clear()
