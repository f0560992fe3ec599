"""On-premises Exchange Server over EWS with an account's password (NTLM or Basic).

The EWS URL is the project's ews_url, or what Autodiscover answers for the sending mailbox (see
workers.transports.autodiscover); a process keeps a discovered URL for DISCOVERY_TTL seconds, and forgets it as
soon as a send fails before EWS answered (the mailbox may have moved).
"""

from __future__ import annotations

import threading
import time
from typing import Iterable

from deskmail.workers import diagnosis
from deskmail.workers.constants import MailService
from deskmail.workers.scrub import scrubbed
from deskmail.workers.service_settings import ExchangeSettings
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import autodiscover, ews, probes
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Recorder, Transport, TransportFailure
from deskmail.workers.transports.ews_http import Endpoint

DISCOVERY_TTL = 3600.0  # seconds; Outlook asks Autodiscover again about as often
NO_EWS_URL = "set ews_url to the server's EWS endpoint, or autodiscover: true"


def endpoint_of(exchange: ExchangeSettings, final_reply_timeout: float, url: str | None = None) -> Endpoint:
    """The EWS endpoint of the `exchange` settings, at url when Autodiscover found it."""
    url = url or exchange.ews_url
    if not url:
        raise TransportFailure(Outcome.CONFIGURATION, NO_EWS_URL)
    return Endpoint(url=url, verify=exchange.verify_certificate, ca_file=exchange.ca_file,
                    timeout=float(exchange.timeout_seconds), final_reply_timeout=final_reply_timeout)


def password_of(exchange: ExchangeSettings) -> ews.Password:
    """The account's password credentials."""
    return ews.Password(exchange.username, exchange.password, exchange.auth_type)


def mailbox_of(exchange: ExchangeSettings, envelope: Envelope) -> str:
    """The mailbox that sends: the settings' sender, else the project's from_address."""
    return exchange.sender or envelope.sender


def discover(exchange: ExchangeSettings, mailbox: str, allow: tuple) -> autodiscover.Found:
    """Ask Autodiscover for the mailbox's EWS URL with the settings' account, trust and timeout."""
    return autodiscover.discover(mailbox, password_of(exchange), allow=allow, ca_file=exchange.ca_file,
                                 verify=exchange.verify_certificate, timeout=float(exchange.timeout_seconds))



class ExchangeTransport(Transport):
    """The `exchange` mail service."""

    service = MailService.EXCHANGE

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.sender = ews.EwsSender(allow)
        self.final_reply_timeout = final_reply_timeout
        self._discovered: dict[tuple[str, int, str], tuple[str, float]] = {}  # -> (EWS URL, when found)
        self._lock = threading.Lock()

    @scrubbed
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver through the project's Exchange server."""
        exchange = settings.typed_as(ExchangeSettings)
        mailbox = mailbox_of(exchange, envelope)
        found = (settings.key, settings.version, mailbox.lower())
        url = self._ews_url(found, exchange, mailbox) if exchange.autodiscover else None
        try:
            return self.sender.send((settings.key, settings.version),
                                    endpoint_of(exchange, self.final_reply_timeout, url), password_of(exchange),
                                    mailbox, envelope)
        except ews.EwsFailure as failure:
            if url and not failure.answered and failure.step == diagnosis.AUTHENTICATION:
                with self._lock:
                    self._discovered.pop(found, None)
            raise

    def _ews_url(self, found: tuple[str, int, str], exchange: ExchangeSettings, mailbox: str) -> str:
        """The discovered EWS URL for the mailbox: this process's, if recent, else Autodiscover's."""
        with self._lock:
            known = self._discovered.get(found)
        if known and time.monotonic() - known[1] < DISCOVERY_TTL:
            return known[0]
        url = discover(exchange, mailbox, self.sender.allow).ews_url
        with self._lock:
            for key in [k for k in self._discovered if k[0] == found[0] and k[1] != found[1]]:
                del self._discovered[key]  # an older settings version's
            self._discovered[found] = (url, time.monotonic())
        return url

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Recorder) -> None:
        """Autodiscover if set; DNS, TCP and TLS to the EWS host; then authentication, sender and send with one
        CreateItem."""
        exchange = settings.typed_as(ExchangeSettings)
        mailbox = mailbox_of(exchange, envelope)
        url = None
        if exchange.autodiscover:
            with checkup.step(diagnosis.DISCOVER) as note:
                found = discover(exchange, mailbox, self.sender.allow)
                note.detail = f"{found.source} gave {found.ews_url}" + \
                    (f" (the mailbox is {found.address})" if found.address.lower() != mailbox.lower() else "")
            url = found.ews_url
        try:
            endpoint = endpoint_of(exchange, self.final_reply_timeout, url)
        except TransportFailure as failure:
            checkup.failed_with(diagnosis.RESOLVE, failure, "fix the project's exchange settings")
        probes.https_endpoint(checkup, endpoint.url, ca_file=endpoint.ca_file, verify=endpoint.verify,
                                 allow=self.sender.allow, timeout=endpoint.timeout)
        ews.diagnose(checkup, endpoint, password_of(exchange), mailbox, envelope, self.sender.allow)

    def close_shared(self) -> None:
        """Close the connections of every cached account (the process's threads share them)."""
        self.sender.close()
