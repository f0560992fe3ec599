"""The mail services deskmail can send through, by name."""

from __future__ import annotations

from workers.config import Config
from workers.constants import MailService
from workers.transports.base import Transport


def build(config: Config) -> dict[str, Transport]:
    """A transport object for every mail service available in this process."""
    from workers.transports.exchange import ExchangeTransport
    from workers.transports.exchange_oauth2 import ExchangeOAuth2Transport
    from workers.transports.gmail_oauth2 import GmailOAuth2Transport
    from workers.transports.smtp import SmtpTransport

    transports: dict[str, Transport] = {
        MailService.SMTP: SmtpTransport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.GMAIL_OAUTH2: GmailOAuth2Transport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.EXCHANGE: ExchangeTransport(config.outbound_allow, config.smtp_final_reply_timeout),
        MailService.EXCHANGE_OAUTH2: ExchangeOAuth2Transport(config.outbound_allow, config.smtp_final_reply_timeout),
    }
    return transports
