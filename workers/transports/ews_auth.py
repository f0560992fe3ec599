"""How an account authenticates to EWS: a password (on-premises Exchange, delegate access) or an app-only
OAuth2 bearer token from the caller's token source (Exchange Online, impersonation)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Callable

import requests
from exchangelib import BASIC, DELEGATE, IMPERSONATION, NTLM, OAUTH2, Credentials
from exchangelib.credentials import OAuth2AuthorizationCodeCredentials

from deskmail.workers.transports.ews_http import Endpoint

EXCHANGE_ONLINE = ("outlook.office365.com", "outlook.office.com")


class Auth(typing.Protocol):
    """How an account authenticates to EWS: a password (on-premises) or a bearer token (OAuth2)."""

    @property
    def access_type(self) -> str: ...
    @property
    def who(self) -> str: ...

    def credentials(self) -> Credentials | OAuth2AuthorizationCodeCredentials: ...
    def exchangelib_auth_type(self) -> str: ...
    def refused(self, endpoint: Endpoint, why: str) -> str: ...
    def advice(self, endpoint: Endpoint) -> str: ...
    def sender_advice(self, mailbox: str) -> str: ...


@dataclass(frozen=True)
class Password:
    """NTLM or Basic with an account's password; the account sends as itself, or with Send As (delegate access)."""

    username: str
    password: str = field(repr=False)
    auth_type: str = "ntlm"
    access_type: typing.ClassVar[str] = DELEGATE

    @property
    def who(self) -> str:
        """The account, for messages (quoted, not repr'd: DOMAIN\\user shows with one backslash)."""
        return f"'{self.username}'"

    def credentials(self) -> Credentials:
        """exchangelib's credentials object."""
        return Credentials(self.username, self.password)

    def exchangelib_auth_type(self) -> str:
        """exchangelib's name of the HTTP authentication."""
        return BASIC if self.auth_type == "basic" else NTLM

    def refused(self, endpoint: Endpoint, why: str) -> str:
        """The detail of a refused login; never the password."""
        detail = f"authentication as {self.who} ({self.auth_type}) refused by {endpoint.host}: {why}"
        if endpoint.host.lower() in EXCHANGE_ONLINE:
            detail += "; Exchange Online does not accept passwords for EWS: use the exchange_oauth2 mail service"
        return detail

    def advice(self, endpoint: Endpoint) -> str:
        """What to change after a refused login."""
        if endpoint.host.lower() in EXCHANGE_ONLINE:
            return ("Exchange Online no longer accepts passwords for EWS (Basic authentication is retired, and EWS "
                    "itself is being switched off): choose the exchange_oauth2 mail service for this project")
        return ("check username (DOMAIN\\user or user@domain) and password, and that auth_type (ntlm or basic) is "
                "one the server's EWS virtual directory allows")

    def sender_advice(self, mailbox: str) -> str:
        """What to change when Exchange refuses the sender."""
        return (f"give {self.who} Send As permission on {mailbox} (Exchange admin center, mailbox delegation), "
                "or send from that account's own primary SMTP address")


class TokenCredentials(OAuth2AuthorizationCodeCredentials):
    """Bearer tokens from the caller's token source: exchangelib never fetches one from Microsoft itself."""

    access_token: dict | None  # exchangelib's property, untyped there (an annotation only: no class attribute)

    def __init__(self, source: Callable[[], str], drop: Callable[[], None]) -> None:
        super().__init__()
        self._source, self._drop = source, drop

    def _bearer(self) -> dict:
        return {"access_token": self._source(), "token_type": "Bearer"}

    def session_params(self) -> dict:
        """A token for every new session, so that exchangelib's own fetch is never reached."""
        with self.lock:
            if self.access_token is None:
                self.access_token = self._bearer()
            return {"token": self.access_token}

    def refresh(self, session: requests.Session) -> None:  # noqa: ARG002 - exchangelib's signature
        """exchangelib found the token expired: ask the source again."""
        with self.lock:
            self.access_token = self._bearer()

    def sync(self) -> bool:
        """Take the source's current token (the source renews it before expiry); True when it changed."""
        with self.lock:
            fresh = self._bearer()
            changed = self.access_token is None or self.access_token["access_token"] != fresh["access_token"]
            if changed:
                self.access_token = fresh
            return changed

    def renew(self) -> None:
        """The server refused the token: drop it at the source and take a new one."""
        with self.lock:
            self._drop()
            self.access_token = self._bearer()


@dataclass(frozen=True)
class Token:
    """An app-only OAuth2 bearer token (from msal): EWS impersonates the sending mailbox."""

    client: str
    source: Callable[[], str] = field(repr=False)
    drop: Callable[[], None] = field(repr=False)
    access_type: typing.ClassVar[str] = IMPERSONATION

    @property
    def who(self) -> str:
        """The application, for messages."""
        return f"application {self.client}"

    def credentials(self) -> TokenCredentials:
        """exchangelib's credentials object, fed by the token source."""
        return TokenCredentials(self.source, self.drop)

    def exchangelib_auth_type(self) -> str:
        """exchangelib's name of the HTTP authentication."""
        return OAUTH2

    def refused(self, endpoint: Endpoint, why: str) -> str:
        """The detail of a refused token; never the token."""
        return f"{endpoint.host} refused the access token of {self.who}: {why}"

    def advice(self, endpoint: Endpoint) -> str:  # noqa: ARG002 - the Auth interface
        """What to change after a refused token."""
        return ("check that the app registration has the Office 365 Exchange Online application permission "
                "full_access_as_app with admin consent, and that EWS is allowed for the tenant")

    def sender_advice(self, mailbox: str) -> str:
        """What to change when Exchange refuses to impersonate the sender."""
        return (f"allow {self.who} to impersonate {mailbox} (ApplicationImpersonation, or an application access "
                "policy that includes the mailbox), and use the mailbox's primary SMTP address")
