"""The mail services deskmail can send through, by name."""

from __future__ import annotations

from deskmail.workers.config import Config
from deskmail.workers.constants import MailService
from deskmail.workers.transports.base import Transport


def build(config: Config) -> dict[str, Transport]:
    """A transport object for every mail service available in this process."""
    from deskmail.workers.transports.exchange import ExchangeTransport
    from deskmail.workers.transports.exchange_oauth2 import ExchangeOAuth2Transport
    from deskmail.workers.transports.gmail_oauth2 import GmailOAuth2Transport
    from deskmail.workers.transports.smtp import SmtpTransport

    transports: dict[str, Transport] = {
        MailService.SMTP: SmtpTransport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.GMAIL_OAUTH2: GmailOAuth2Transport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.EXCHANGE: ExchangeTransport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.EXCHANGE_OAUTH2: ExchangeOAuth2Transport(config.outbound_allow, config.smtp_final_reply_timeout),
    }
    return transports
