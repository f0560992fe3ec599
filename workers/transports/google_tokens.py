"""Google OAuth2 access tokens for Gmail SMTP (XOAUTH2): built lazily, cached per process, refreshed early."""

from __future__ import annotations

import threading
from typing import Hashable, Iterable

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from deskmail.workers import metrics
from deskmail.workers.service_settings import GmailSettings
from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.https import PolicySession, host_port
from deskmail.workers.transports.https_failures import connection_failure
from deskmail.workers.transports.tokens import Bound

SCOPES = ["https://mail.google.com/"]
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_ERRORS = {
    "invalid_grant": "the refresh token expired or was revoked, or the service account may not act for the "
                     "sender (domain-wide delegation for https://mail.google.com/)",
    "unauthorized_client": "the client may not use this grant: for a service account, enable domain-wide "
                           "delegation for scope https://mail.google.com/ in the Workspace admin console",
    "invalid_client": "the client id or client secret is wrong",
    "access_denied": "the account refused access for this client",
}


TOKEN_ADVICE = {
    "invalid_grant": "make a new refresh token for the sender (or, for a service account, allow its client id "
                     "the scope https://mail.google.com/ under domain-wide delegation) and save it with "
                     "`deskmail settings set`",
    "unauthorized_client": "enable domain-wide delegation for the service account's client id with scope "
                           "https://mail.google.com/ in the Google Workspace admin console",
    "invalid_client": "copy the OAuth client id and secret again from the Google Cloud console",
    "access_denied": "sign in as the sender and grant the client access to Gmail again",
}


def token_advice(failure: TransportFailure) -> str:
    """What to change after a failed token request, by Google's error code."""
    code = next((c for c in TOKEN_ADVICE if c in failure.detail), None)
    if code:
        return TOKEN_ADVICE[code]
    return "Google's token endpoint is failing for now; try again later" if failure.outcome is Outcome.TRANSIENT \
        else "check the OAuth credentials and the token_uri in the settings"


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's request adapter over a PolicySession (outbound policy, the project's CA), with our timeout
    on every token call (google-auth passes its own 120 s otherwise)."""

    def __init__(self, session: PolicySession, timeout: float) -> None:
        super().__init__(session)
        self.timeout = timeout

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):  # noqa: ANN001
        return super().__call__(url, method, body, headers, timeout=timeout or self.timeout, **kwargs)


def credentials_for(gmail: GmailSettings) -> google.auth.credentials.Credentials:
    """Service-account (domain-wide delegation, subject = sender) or OAuth client + refresh token credentials."""
    token_uri = gmail.token_uri or DEFAULT_TOKEN_URI
    if gmail.service_account_key:
        info = {**gmail.service_account_key, "token_uri": token_uri}
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES).with_subject(
            gmail.sender)
    return user_credentials.Credentials(None, refresh_token=gmail.refresh_token, token_uri=token_uri,
                                        client_id=gmail.client_id, client_secret=gmail.client_secret,
                                        scopes=SCOPES)


def _refresh_failure(exc: google.auth.exceptions.GoogleAuthError, token_uri: str) -> TransportFailure:
    text = str(exc)
    code = next((c for c in GOOGLE_ERRORS if c in text), None)
    if code:
        return TransportFailure(Outcome.CONFIGURATION, f"Google token endpoint: {code}: {GOOGLE_ERRORS[code]}")
    found = connection_failure(exc, *host_port(token_uri), sends=False, noun="Google's token endpoint") \
        if isinstance(exc, google.auth.exceptions.TransportError) else None
    if found is not None:
        return found.failure()
    if getattr(exc, "retryable", False) or isinstance(exc, google.auth.exceptions.TransportError):
        return TransportFailure(Outcome.TRANSIENT, f"Google token endpoint unavailable: {text[:300]}")
    return TransportFailure(Outcome.CONFIGURATION, f"Google token endpoint refused: {text[:300]}")


class GoogleTokens:
    """One credentials object per sending account; google-auth counts a token stale ~4 min early."""

    def __init__(self, allow: Iterable = ()) -> None:
        self.allow = tuple(allow)
        self._creds: dict[Hashable, google.auth.credentials.Credentials] = {}
        self._lock = threading.Lock()

    def token(self, key: Hashable, gmail: GmailSettings) -> str:
        """A valid access token for the account, refreshing it when needed."""
        with self._lock:
            creds = self._creds.get(key)
            if creds is None:
                creds = self._creds[key] = credentials_for(gmail)
            if not creds.valid:
                self._refresh(creds, gmail)
            return creds.token

    def _refresh(self, creds: google.auth.credentials.Credentials, gmail: GmailSettings) -> None:
        """Ask the token endpoint for a new token; a refused address or an unusable ca_file raises its own
        TransportFailure from the session."""
        timeout = float(gmail.timeout_seconds)
        with PolicySession(self.allow, ca_file=gmail.ca_file, timeout=timeout) as session:
            try:
                creds.refresh(_TimedRequest(session, timeout))
            except google.auth.exceptions.GoogleAuthError as exc:
                metrics.token_refresh_failed("gmail_oauth2")
                raise _refresh_failure(exc, gmail.token_uri or DEFAULT_TOKEN_URI) from None

    def source(self, key: Hashable, gmail: GmailSettings) -> Bound:
        """The account's token source (workers.transports.tokens)."""
        return Bound(lambda: self.token(key, gmail), lambda: self.drop(key))

    def drop(self, key: Hashable) -> None:
        """Forget the account's token (the server refused it)."""
        with self._lock:
            self._creds.pop(key, None)
