"""On-premises Exchange Server over EWS with an account's password (NTLM or Basic).

Autodiscover is not supported: exchangelib's discovery probes several guessed hosts (and plain http redirects)
with its own global timeouts, CA trust and a cache on disk, none of which the outbound policy or a project's
ca_file can govern. `autodiscover: true` fails as a configuration error that asks for ews_url.
"""

from __future__ import annotations

from typing import Iterable

from workers import diagnosis
from workers.constants import MailService
from workers.diagnosis import Checkup
from workers.settings import ProjectSettings
from workers.transports import ews
from workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure
from workers.transports.ews_http import Endpoint

NO_AUTODISCOVER = ("Autodiscover is not supported: set ews_url to the server's EWS endpoint, usually "
                   "https://mail.example.com/EWS/Exchange.asmx (Outlook's \"Test E-mail AutoConfiguration\" shows it)")


def endpoint_of(block: dict, final_reply_timeout: float) -> Endpoint:
    """The EWS endpoint of an `exchange` settings block."""
    if block.get("autodiscover") or not block.get("ews_url"):
        raise TransportFailure(Outcome.CONFIGURATION, NO_AUTODISCOVER)
    return Endpoint(url=block["ews_url"], verify=block.get("verify_certificate", True), ca_file=block.get("ca_file"),
                    timeout=float(block.get("timeout_seconds", 30)), final_reply_timeout=final_reply_timeout)


def password_of(block: dict) -> ews.Password:
    """The account's password credentials."""
    return ews.Password(block["username"], block["password"], block.get("auth_type", "ntlm"))


def mailbox_of(block: dict, envelope: Envelope) -> str:
    """The mailbox that sends: the block's sender, else the project's from_address."""
    return block.get("sender") or envelope.sender


class ExchangeTransport(Transport):
    """The `exchange` mail service."""

    service = MailService.EXCHANGE

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.sender = ews.EwsSender(allow)
        self.final_reply_timeout = final_reply_timeout

    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver through the project's Exchange server."""
        block = settings.block()
        return self.sender.send((settings.key, settings.version), endpoint_of(block, self.final_reply_timeout),
                                password_of(block), mailbox_of(block, envelope), envelope)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Checkup) -> None:
        """DNS, TCP and TLS to the EWS host, then authentication, sender and send with one CreateItem."""
        block = settings.block()
        try:
            endpoint = endpoint_of(block, self.final_reply_timeout)
        except TransportFailure as failure:
            checkup.failed(diagnosis.RESOLVE, failure.detail, "fix the project's exchange settings")
        diagnosis.https_endpoint(checkup, endpoint.url, ca_file=endpoint.ca_file, verify=endpoint.verify,
                                 allow=self.sender.allow, timeout=endpoint.timeout)
        ews.diagnose(checkup, endpoint, password_of(block), mailbox_of(block, envelope), envelope, self.sender.allow)

    def close(self) -> None:
        """Close the connections of every cached account."""
        self.sender.close()
