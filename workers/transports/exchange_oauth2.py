"""Microsoft 365 with modern auth: app-only tokens from Entra ID, mail handed over by Microsoft Graph
sendMail (route `graph`, the default), SMTP AUTH XOAUTH2 (route `smtp`) or EWS (route `ews`)."""

from __future__ import annotations

from typing import Iterable

import msal

from deskmail.workers.constants import MailService
from deskmail.workers.scrub import scrubbed
from deskmail.workers.diagnosis import AUTHENTICATION, SEND, SENDER, TOKEN
from deskmail.workers.service_settings import ExchangeOAuth2Settings
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import ews, graph, probes, smtp_session
from deskmail.workers.transports.base import Delivered, Envelope, Recorder, Transport, TransportFailure
from deskmail.workers.transports.ews_http import Endpoint as EwsEndpoint
from deskmail.workers.transports.graph import GraphClient, Mailbox
from deskmail.workers.transports.https import PolicySession
from deskmail.workers.transports.microsoft_tokens import (AppRegistration, MicrosoftTokens, acquire, build_app,
                                                        close_app, scope_for)
from deskmail.workers.transports.smtp import SmtpSender, submission_endpoint
from deskmail.workers.transports.tokens import Bound


def scope_of(microsoft: ExchangeOAuth2Settings) -> str:
    """Graph's scope for route graph; Exchange Online's (the origin of ews_url) for routes ews and smtp."""
    return scope_for(microsoft.graph_url if microsoft.route == "graph" else microsoft.ews_url)



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
        """Deliver by the settings' route with a cached token for the app registration."""
        microsoft = settings.typed_as(ExchangeOAuth2Settings)
        key = (settings.key, settings.version)
        source = self.tokens.source(key, microsoft, scope_of(microsoft))
        if microsoft.route == "smtp":
            auth = smtp_session.XOAuth2(microsoft.sender, source)
            return self.smtp.send(key, self._smtp_endpoint(microsoft), auth, envelope)
        if microsoft.route == "ews":
            return self.ews.send(key, self._ews_endpoint(microsoft),
                                 ews.Token(microsoft.client_id, source.token, source.drop), microsoft.sender,
                                 envelope)
        return self.graph.send(self._mailbox(microsoft), envelope, source.token, source.drop)

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Recorder) -> None:
        """The Test action: the authority's endpoint, a fresh token, then the route's own steps."""
        microsoft = settings.typed_as(ExchangeOAuth2Settings)
        registration, scope = AppRegistration.of(microsoft), scope_of(microsoft)
        probes.https_endpoint(checkup, registration.authority_url, ca_file=registration.ca_file,
                              allow=self.allow, timeout=registration.timeout)
        app = self._fresh_token(checkup, registration, scope)
        route_steps = {"smtp": self._diagnose_smtp, "ews": self._diagnose_ews}.get(microsoft.route,
                                                                                   self._diagnose_graph)
        try:
            route_steps(checkup, microsoft, envelope,
                        Bound(lambda: acquire(app, registration, scope), app.remove_tokens_for_client))
        finally:
            close_app(app)

    def _fresh_token(self, checkup: Recorder, registration: AppRegistration,
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

    def _diagnose_graph(self, checkup: Recorder, microsoft: ExchangeOAuth2Settings, envelope: Envelope,
                        source: Bound) -> None:
        """Graph's endpoint, then one real sendMail: a 202 proves the token, the sender and the send."""
        mailbox = self._mailbox(microsoft)
        probes.https_endpoint(checkup, mailbox.graph_url, ca_file=mailbox.ca_file, allow=self.allow,
                              timeout=mailbox.timeout)
        try:
            with PolicySession(self.allow, ca_file=mailbox.ca_file) as session:
                delivered = graph.send(session, mailbox, envelope, source.token, source.drop)
        except TransportFailure as failure:
            checkup.failed_with(SEND, failure)
        checkup.passed(AUTHENTICATION, "Graph accepted the token")
        checkup.passed(SENDER, f"the app may send as {mailbox.sender} (Mail.Send)")
        checkup.passed(SEND, f"accepted for {', '.join(envelope.recipients)}: {delivered.detail}")

    def _diagnose_smtp(self, checkup: Recorder, microsoft: ExchangeOAuth2Settings, envelope: Envelope,
                       source: Bound) -> None:
        """The SMTP client's steps, logging in with XOAUTH2 as the sender."""
        auth = smtp_session.XOAuth2(microsoft.sender, source)
        self.smtp.test(self._smtp_endpoint(microsoft), auth, envelope, checkup)

    def _diagnose_ews(self, checkup: Recorder, microsoft: ExchangeOAuth2Settings, envelope: Envelope,
                      source: Bound) -> None:
        """The EWS host's endpoint, then the shared EWS steps (impersonating the sender) on a fresh account."""
        endpoint = self._ews_endpoint(microsoft)
        probes.https_endpoint(checkup, endpoint.url, ca_file=endpoint.ca_file, allow=self.allow,
                              timeout=endpoint.timeout)
        ews.diagnose(checkup, endpoint, ews.Token(microsoft.client_id, source.token, source.drop),
                     microsoft.sender, envelope, self.allow)

    def _mailbox(self, microsoft: ExchangeOAuth2Settings) -> Mailbox:
        return Mailbox(microsoft.graph_url, microsoft.sender, microsoft.ca_file, float(microsoft.timeout_seconds),
                       self.smtp.final_reply_timeout)

    def _smtp_endpoint(self, microsoft: ExchangeOAuth2Settings) -> smtp_session.Endpoint:
        return submission_endpoint(microsoft, self.smtp.final_reply_timeout)

    def _ews_endpoint(self, microsoft: ExchangeOAuth2Settings) -> EwsEndpoint:
        return EwsEndpoint(url=microsoft.ews_url, ca_file=microsoft.ca_file,
                           timeout=float(microsoft.timeout_seconds),
                           final_reply_timeout=self.smtp.final_reply_timeout)

    def close(self) -> None:
        """Close this thread's SMTP sessions and Graph connections."""
        self.smtp.sessions.clear()
        self.graph.close()

    def close_shared(self) -> None:
        """Close the EWS accounts (the process's threads share them)."""
        self.ews.close()
