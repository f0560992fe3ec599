"""Microsoft 365 with modern auth: app-only tokens from Entra ID, mail handed over by Microsoft Graph
sendMail (route `graph`, the default), SMTP AUTH XOAUTH2 (route `smtp`) or EWS (route `ews`)."""

from __future__ import annotations

from typing import Callable, Iterable

import msal

from workers.constants import MailService
from workers.scrub import scrubbed
from workers.diagnosis import AUTHENTICATION, SEND, SENDER, TOKEN, Checkup
from workers.settings import ProjectSettings
from workers.transports import ews, graph, probes, smtp_session
from workers.transports.base import Delivered, Envelope, Transport, TransportFailure
from workers.transports.ews_http import Endpoint as EwsEndpoint
from workers.transports.graph import GraphClient, Mailbox
from workers.transports.https import PolicySession
from workers.transports.microsoft_tokens import AppRegistration, MicrosoftTokens, acquire, build_app, close_app, \
    scope_for
from workers.transports.smtp import SmtpSender, submission_endpoint
from workers.transports.tokens import Bound

EWS_URL = "https://outlook.office365.com/EWS/Exchange.asmx"
SMTP_HOST = "smtp.office365.com"
Token, Drop = Callable[[], str], Callable[[], None]  # a bearer token source, and how to tell it a token was refused


def scope_of(block: dict) -> str:
    """Graph's scope for route graph; Exchange Online's (the origin of ews_url) for routes ews and smtp."""
    if block.get("route", "graph") == "graph":
        return scope_for(block.get("graph_url", graph.GRAPH_URL))
    return scope_for(block.get("ews_url", EWS_URL))


class ExchangeOAuth2Transport(Transport):
    """The `exchange_oauth2` mail service."""

    service = MailService.EXCHANGE_OAUTH2

    def __init__(self, allow: Iterable = (), final_reply_timeout: float = 600.0) -> None:
        self.smtp = SmtpSender(allow, final_reply_timeout)
        self.allow = self.smtp.allow
        self.tokens = MicrosoftTokens(self.allow)
        self.graph = GraphClient(self.allow)
        self.ews = ews.EwsSender(self.allow)

    @scrubbed
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver by the block's route with a cached token for the app registration."""
        block = settings.block()
        key, scope = (settings.key, settings.version), scope_of(block)
        token: Token = lambda: self.tokens.token(key, block, scope)  # noqa: E731
        drop: Drop = lambda: self.tokens.drop(key)  # noqa: E731
        route = block.get("route", "graph")
        if route == "smtp":
            auth = smtp_session.XOAuth2(block["sender"], Bound(token, drop))
            return self.smtp.send(key, self._smtp_endpoint(block), auth, envelope)
        if route == "ews":
            auth = ews.Token(block["client_id"], token, drop)
            return self.ews.send(key, self._ews_endpoint(block), auth, block["sender"], envelope)
        return self.graph.send(self._mailbox(block), envelope, token, drop)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Checkup) -> None:
        """The Test action: the authority's endpoint, a fresh token, then the route's own steps."""
        block = settings.block()
        registration, scope = AppRegistration.from_block(block), scope_of(block)
        probes.https_endpoint(checkup, registration.authority_url, ca_file=registration.ca_file,
                                 allow=self.allow, timeout=registration.timeout)
        app = self._fresh_token(checkup, registration, scope)
        route_steps = {"smtp": self._diagnose_smtp, "ews": self._diagnose_ews}.get(block.get("route", "graph"),
                                                                                   self._diagnose_graph)
        try:
            route_steps(checkup, block, envelope, lambda: acquire(app, registration, scope),
                        app.remove_tokens_for_client)
        finally:
            close_app(app)

    def _fresh_token(self, checkup: Checkup, registration: AppRegistration,
                     scope: str) -> msal.ConfidentialClientApplication:
        """The TOKEN step, from an msal app of its own (the sending cache is left alone)."""
        app = None
        try:
            app = build_app(registration, self.allow)
            acquire(app, registration, scope)
        except TransportFailure as failure:
            close_app(app)
            checkup.failed_with(TOKEN, failure)
        checkup.passed(TOKEN, f"app-only token for {scope} from {registration.authority}")
        return app

    def _diagnose_graph(self, checkup: Checkup, block: dict, envelope: Envelope, token: Token, drop: Drop) -> None:
        """Graph's endpoint, then one real sendMail: a 202 proves the token, the sender and the send."""
        mailbox = self._mailbox(block)
        probes.https_endpoint(checkup, mailbox.graph_url, ca_file=mailbox.ca_file, allow=self.allow,
                                 timeout=mailbox.timeout)
        try:
            with PolicySession(self.allow, ca_file=mailbox.ca_file) as session:
                delivered = graph.send(session, mailbox, envelope, token, drop)
        except TransportFailure as failure:
            checkup.failed_with(failure.step or SEND, failure)
        checkup.passed(AUTHENTICATION, "Graph accepted the token")
        checkup.passed(SENDER, f"the app may send as {mailbox.sender} (Mail.Send)")
        checkup.passed(SEND, f"accepted for {', '.join(envelope.recipients)}: {delivered.detail}")

    def _diagnose_smtp(self, checkup: Checkup, block: dict, envelope: Envelope, token: Token, drop: Drop) -> None:
        """The shared SMTP steps, logging in with XOAUTH2 as the sender."""
        auth = smtp_session.XOAuth2(block["sender"], Bound(token, drop))
        self.smtp.test(self._smtp_endpoint(block), auth, envelope, checkup)

    def _diagnose_ews(self, checkup: Checkup, block: dict, envelope: Envelope, token: Token, drop: Drop) -> None:
        """The EWS host's endpoint, then the shared EWS steps (impersonating the sender) on a fresh account."""
        endpoint = self._ews_endpoint(block)
        probes.https_endpoint(checkup, endpoint.url, ca_file=endpoint.ca_file, allow=self.allow,
                                 timeout=endpoint.timeout)
        ews.diagnose(checkup, endpoint, ews.Token(block["client_id"], token, drop), block["sender"], envelope,
                     self.allow)

    def _mailbox(self, block: dict) -> Mailbox:
        return Mailbox(block.get("graph_url", graph.GRAPH_URL), block["sender"], block.get("ca_file"),
                       float(block.get("timeout_seconds", 30)), self.smtp.final_reply_timeout)

    def _smtp_endpoint(self, block: dict) -> smtp_session.Endpoint:
        return submission_endpoint(block, SMTP_HOST, self.smtp.final_reply_timeout)

    def _ews_endpoint(self, block: dict) -> EwsEndpoint:
        return EwsEndpoint(url=block.get("ews_url", EWS_URL), ca_file=block.get("ca_file"),
                           timeout=float(block.get("timeout_seconds", 30)),
                           final_reply_timeout=self.smtp.final_reply_timeout)

    def close(self) -> None:
        """Close this thread's SMTP sessions and Graph connections, and the EWS accounts (shared by threads)."""
        self.smtp.sessions.clear()
        self.graph.close()
        self.ews.close()
