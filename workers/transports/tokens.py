"""The token-source interface every transport that needs a bearer token uses (msal's and google-auth's alike)."""

from __future__ import annotations

from typing import Callable, Protocol

from deskmail.workers.transports.base import TransportFailure
from deskmail.workers.transports.steps import TOKEN, attributed


class TokenSource(Protocol):
    """A bearer token for one sending account; a failure to get one raises a classified TransportFailure
    (workers.transports.base) named after the token step."""

    def token(self) -> str:
        """A valid access token, from the cache while it has time left."""

    def drop(self) -> None:
        """Forget the cached token (a server refused it): the next token() asks the authority again."""


class Bound:
    """A TokenSource from a cache's two calls for one account."""

    def __init__(self, token: Callable[[], str], drop: Callable[[], None]) -> None:
        self._token, self._drop = token, drop

    def token(self) -> str:
        """The cache's token for the account; a failure is named after the token step."""
        try:
            return self._token()
        except TransportFailure as failure:
            raise attributed(TOKEN, failure) from None

    def drop(self) -> None:
        """Tell the cache the token was refused."""
        self._drop()
