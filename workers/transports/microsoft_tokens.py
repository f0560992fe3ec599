"""Microsoft Entra ID app-only access tokens (client credentials) with msal: one app per sending account,
built lazily, tokens cached by msal per scope and refreshed 5 minutes before they expire."""

from __future__ import annotations

import re
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import msal
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from deskmail.workers import metrics
from deskmail.workers.scrub import Scrubber
from deskmail.workers.service_settings import ExchangeOAuth2Settings
from deskmail.workers.transports import https
from deskmail.workers.transports.base import Outcome, TransportFailure, advised
from deskmail.workers.transports.https import PolicySession
from deskmail.workers.transports.https_failures import connection_failure
from deskmail.workers.transports.tokens import Bound

AUTHORITY_URL = "https://login.microsoftonline.com"
Key = tuple[str, int]  # (project, settings version): new settings get a new app, the old one is closed

# What each Entra ID error means for deskmail's settings: (what is wrong, what to change).
AADSTS: dict[str, tuple[str, str]] = {
    "AADSTS7000215": ("the client secret is wrong",
                      "create a new client secret in the app registration (Certificates & secrets) and save its "
                      "Value, not its Secret ID, as client_secret with `deskmail settings set`"),
    "AADSTS7000222": ("the client secret has expired",
                      "create a new client secret in the app registration (Certificates & secrets) and save it as "
                      "client_secret with `deskmail settings set`"),
    "AADSTS700016": ("there is no application {client_id} in tenant {tenant_id}",
                     "check client_id (the app registration's Application (client) ID) and tenant_id; an app "
                     "registered in another tenant must first be consented to in this one"),
    "AADSTS90002": ("tenant {tenant_id} does not exist at {authority_url}",
                    "check tenant_id (the Directory (tenant) ID or the tenant's primary domain) and authority_url"),
    "AADSTS700027": ("Microsoft refused the certificate assertion",
                     "upload the certificate to the app registration (Certificates & secrets), and check that "
                     "thumbprint is its SHA-1 thumbprint and private_key its private key"),
    "AADSTS700024": ("the certificate assertion is outside its validity period", "check this host's clock"),
    "AADSTS50034": ("an account in the request does not exist in tenant {tenant_id}",
                    "check tenant_id: it must be the tenant of the sender's mailbox"),
    "AADSTS65001": ("the application has no admin consent for the permission it needs",
                    "grant admin consent in the app registration's API permissions: Mail.Send (Microsoft Graph) "
                    "for route graph, SMTP.SendAsApp or full_access_as_app (Office 365 Exchange Online) for "
                    "routes smtp and ews"),
    "AADSTS1002012": ("the scope {scope} is not valid",
                      "check graph_url (route graph) or ews_url (routes ews and smtp): the scope is that URL's "
                      "origin followed by /.default"),
    "AADSTS500011": ("the resource of scope {scope} does not exist in tenant {tenant_id}",
                     "check graph_url or ews_url: they must belong to the same Microsoft cloud as authority_url"),
    "AADSTS7000112": ("the application {client_id} is disabled in tenant {tenant_id}",
                      "enable the application under Enterprise applications in the tenant"),
}
TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}
_AADSTS = re.compile(r"AADSTS\d+")


@dataclass(frozen=True)
class AppRegistration:
    """The app registration part of an `exchange_oauth2` settings block."""

    tenant_id: str
    client_id: str
    credential: str | dict = field(repr=False)  # a client secret, or msal's {"private_key", "thumbprint"}
    authority_url: str = AUTHORITY_URL
    ca_file: str | None = None
    timeout: float = 30.0

    @classmethod
    def of(cls, microsoft: ExchangeOAuth2Settings) -> "AppRegistration":
        """The registration in the `exchange_oauth2` settings."""
        certificate = microsoft.certificate
        credential = {"private_key": certificate["private_key"], "thumbprint": certificate["thumbprint"]} \
            if certificate else (microsoft.client_secret or "")
        return cls(microsoft.tenant_id, microsoft.client_id, credential, microsoft.authority_url.rstrip("/"),
                   microsoft.ca_file, float(microsoft.timeout_seconds))

    @property
    def authority(self) -> str:
        """msal's authority: the login host and the tenant."""
        return f"{self.authority_url}/{self.tenant_id}"

    def fill(self, template: str, scope: str = "") -> str:
        """One of our sentences with the registration's names (never its secrets) filled in."""
        return template.format(client_id=self.client_id, tenant_id=self.tenant_id,
                               authority_url=self.authority_url, scope=scope)

    def scrub(self, text: str) -> str:
        """Someone else's text (Microsoft's, an exception's) with any secret of this registration masked, in any
        encoding workers.scrub knows."""
        return Scrubber(self._secrets(), [self.client_id]).text(text)

    def _secrets(self) -> list[str]:
        if isinstance(self.credential, dict):
            return [self.credential["private_key"]]
        return [self.credential]


def scope_for(url: str) -> str:
    """The `.default` scope of the resource at url (Graph, or Exchange Online for EWS and SMTP)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


class _TokenSession(PolicySession):
    """msal's HTTP client: a busy authority (429, 5xx) fails transiently with its Retry-After before msal
    sees the answer (msal would replay it to every caller for that long, and drops the header)."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """PolicySession's request; a busy answer raises TransportFailure."""
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            host = urllib.parse.urlsplit(url).netloc
            raise advised(Outcome.TRANSIENT, f"Microsoft login at {host} answered {response.status_code} "
                                             f"{response.reason}", "try again later",
                          retry_after=https.retry_after(response.headers.get("Retry-After")))
        return response


def build_app(registration: AppRegistration, allow: Iterable = ()) -> msal.ConfidentialClientApplication:
    """A confidential client; the constructor GETs the authority's OpenID configuration (I/O, can fail)."""
    _check(registration)
    session = _TokenSession(allow, ca_file=registration.ca_file, timeout=registration.timeout)  # may fail too
    try:
        with _translated(registration):
            return msal.ConfidentialClientApplication(
                registration.client_id, client_credential=registration.credential,
                authority=registration.authority, instance_discovery=False, http_client=session,
                token_cache=msal.TokenCache())
    except TransportFailure:
        session.close()
        raise


def _check(registration: AppRegistration) -> None:
    """Refuse settings msal would fail on obscurely: a plain-http authority, a private key it cannot sign with."""
    if not registration.authority_url.lower().startswith("https://"):
        raise advised(Outcome.CONFIGURATION, f"authority_url {registration.authority_url} is not https",
                      "set authority_url to the https URL of the login authority "
                      f"(default {AUTHORITY_URL})")
    if isinstance(registration.credential, dict):
        _check_private_key(registration.credential["private_key"])


def _check_private_key(pem: str) -> None:
    """msal signs the client assertion with RS256: the key must be an unencrypted RSA key in PEM."""
    advice = "set certificate.private_key to the certificate's unencrypted RSA private key in PEM " \
             "(-----BEGIN PRIVATE KEY-----), the key of the certificate uploaded to the app registration"
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise advised(Outcome.CONFIGURATION, "certificate.private_key is not an unencrypted PEM private key",
                      advice) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise advised(Outcome.CONFIGURATION, "certificate.private_key is not an RSA key", advice)


def acquire(app: msal.ConfidentialClientApplication, registration: AppRegistration, scope: str) -> str:
    """An access token for scope, from msal's cache while it has more than 5 minutes left."""
    try:
        with _translated(registration):
            result = app.acquire_token_for_client(scopes=[scope])
    except TransportFailure:
        metrics.token_refresh_failed("exchange_oauth2")
        raise
    if "access_token" in result:
        return result["access_token"]
    metrics.token_refresh_failed("exchange_oauth2")
    raise _refusal(registration, result, scope)


def _refusal(registration: AppRegistration, result: dict, scope: str) -> TransportFailure:
    """The failure for msal's {"error", "error_description"} answer."""
    error = str(result.get("error", "unknown_error"))
    said = (result.get("error_description") or "").strip().splitlines()[:1]
    said_text = registration.scrub(said[0])[:300] if said else ""
    found = _AADSTS.search(said_text)
    codes = result.get("error_codes") or [""]
    code = found.group(0) if found else f"AADSTS{codes[0]}"
    if error in TRANSIENT_ERRORS:
        return advised(Outcome.TRANSIENT, f"Microsoft login is failing for now ({error}): {said_text}",
                       "try again later")
    if code in AADSTS:
        problem, advice = AADSTS[code]
        return advised(Outcome.CONFIGURATION,
                       f"{registration.fill(problem, scope)} (Microsoft: {said_text})",
                       registration.fill(advice, scope))
    return advised(Outcome.CONFIGURATION, f"Microsoft login refused the token request ({error}): {said_text}",
                   "check tenant_id, client_id and the client secret or certificate in the settings")


@contextmanager
def _translated(registration: AppRegistration) -> Iterator[None]:
    """msal's and requests' exceptions as TransportFailure; one raised already (outbound policy, busy) passes."""
    try:
        yield
    except TransportFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever msal or requests raised is classified here
        raise _failure(registration, exc) from None


def _failure(registration: AppRegistration, exc: Exception) -> TransportFailure:
    """The failure for an exception out of msal: network, TLS, a missing tenant, an unusable answer."""
    host, port = https.host_port(registration.authority_url)
    found = connection_failure(exc, host, port, sends=False, noun="Microsoft login")
    if found is not None:
        return advised(found.outcome, found.problem, found.advice or "try again later; check that this host may "
                                                                     "reach it")
    if isinstance(exc, ValueError) and "authority configuration" in str(exc):
        return advised(Outcome.CONFIGURATION, registration.fill(
            "tenant {tenant_id} was not found: {authority_url}/{tenant_id} has no OpenID configuration "
            "(AADSTS90002, or a wrong authority_url)"), registration.fill(AADSTS["AADSTS90002"][1]))
    if isinstance(exc, ValueError):  # msal's and requests' word for an unusable authority or answer
        return advised(Outcome.CONFIGURATION,
                       f"Microsoft login at {host}:{port}: {registration.scrub(str(exc))[:300]}",
                       "check authority_url and tenant_id")
    return advised(Outcome.TRANSIENT, f"Microsoft login failed: {type(exc).__name__}", "try again later")


@dataclass
class _Account:
    lock: threading.Lock = field(default_factory=threading.Lock)
    app: msal.ConfidentialClientApplication | None = None


class MicrosoftTokens:
    """One msal app per sending account and process; a slow tenant blocks only its own account."""

    def __init__(self, allow: Iterable = ()) -> None:
        self.allow = tuple(allow)
        self._accounts: dict[Key, _Account] = {}
        self._lock = threading.Lock()

    def token(self, key: Key, microsoft: ExchangeOAuth2Settings, scope: str) -> str:
        """A valid access token for the account and scope."""
        account = self._account(key)
        with account.lock:
            registration = AppRegistration.of(microsoft)
            if account.app is None:
                account.app = build_app(registration, self.allow)
            return acquire(account.app, registration, scope)

    def source(self, key: Key, microsoft: ExchangeOAuth2Settings, scope: str) -> Bound:
        """The account's token source for scope (workers.transports.tokens)."""
        return Bound(lambda: self.token(key, microsoft, scope), lambda: self.drop(key))

    def drop(self, key: Key) -> None:
        """Forget the account's tokens (a server refused one): the next call asks Entra ID again."""
        account = self._accounts.get(key)
        if account is not None and account.app is not None:
            account.app.remove_tokens_for_client()

    def _account(self, key: Key) -> _Account:
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                for old in [k for k in self._accounts if k[0] == key[0]]:
                    close_app(self._accounts.pop(old).app)
                account = self._accounts[key] = _Account()
            return account


def close_app(app: msal.ConfidentialClientApplication | None) -> None:
    """Close the HTTP connections of an app no longer used."""
    if app is not None:
        app.http_client.close()
