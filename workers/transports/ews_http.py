"""The HTTP side of EWS: exchangelib protocols with per-endpoint timeouts, TLS trust and outbound policy.

exchangelib keeps process-wide state (a protocol cache keyed by endpoint and credentials, a global HTTP adapter
class, a global timeout). EwsProtocol uses none of it: its sessions carry the endpoint's timeouts and the
pinned HTTPS of workers.transports.https (the project's TLS trust, connections only to addresses the outbound
policy checked), and whoever opens one closes it.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass

import requests
from exchangelib import Configuration, FailFast
from exchangelib.errors import SessionPoolMinSizeReached, TransportError, UnauthorizedError
from exchangelib.protocol import CachingProtocol, Protocol
from exchangelib.util import is_xml

from deskmail.workers.transports import https, tls


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach EWS; `final_reply_timeout` bounds the wait for the answer to a sent message."""

    url: str
    verify: bool = True
    ca_file: str | None = None
    timeout: float = 30.0
    final_reply_timeout: float = 600.0

    @property
    def host(self) -> str:
        """The URL's host name."""
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port."""
        return urllib.parse.urlsplit(self.url).port or 443

    @property
    def is_https(self) -> bool:
        """Only https may carry a password or token."""
        parts = urllib.parse.urlsplit(self.url)
        return parts.scheme == "https" and bool(parts.hostname)


class HttpAnswer(TransportError):
    """An HTTP answer that is not EWS SOAP."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.reason = response.reason or ""
        self.location = response.headers.get("Location", "")
        self.cas_error = response.headers.get("X-CasErrorCode", "")
        self.retry_after = https.retry_after(response.headers.get("Retry-After"))
        super().__init__(f"HTTP {self.status} {self.reason}".strip())


class _Policy(FailFast):
    """Fail fast (deskmail's retry schedule decides when to try again), keeping what HTTP answers say."""

    def raise_response_errors(self, response: requests.Response) -> None:
        """Return for EWS SOAP; raise UnauthorizedError for 401 and HttpAnswer for anything else."""
        status = response.status_code
        if status == 401:  # even with `Connection: close`, which exchangelib would take for a busy server
            locked = b"currently locked out" in response.content
            raise UnauthorizedError("the account is locked out" if locked else "HTTP 401 Unauthorized")
        if status in (200, 500) and response.content and is_xml(response.content):
            return
        raise HttpAnswer(response)


class _Uncached(CachingProtocol):
    """exchangelib caches protocols process-wide; an EwsProtocol belongs to whoever opened it."""

    def __call__(cls, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204, N805
        return type.__call__(cls, *args, **kwargs)


class PinnedSessions:
    """For an exchangelib protocol class: its sessions use pinned HTTPS with the protocol's `context` and `allow`."""

    context: ssl.SSLContext
    allow: tuple

    def raw_session(self, prefix: str, oauth2_client=None, oauth2_session_params=None,  # noqa: ANN001
                    oauth2_token_endpoint=None) -> requests.Session:  # noqa: ANN001
        """exchangelib's session with our adapter (see pinned)."""
        session = super().raw_session(prefix, oauth2_client, oauth2_session_params,  # type: ignore[misc]
                                      oauth2_token_endpoint)
        return pinned(session, prefix, self.context, self.allow)


class EwsProtocol(PinnedSessions, Protocol, metaclass=_Uncached):
    """An exchangelib protocol with the endpoint's timeouts, TLS trust and outbound policy."""

    RETRY_WAIT = 0  # no back-off guess of exchangelib's own: the server's back-off or our schedule decides

    def __init__(self, config: Configuration, endpoint: Endpoint, allow: tuple) -> None:
        """Raises TransportFailure when the endpoint's ca_file cannot be used."""
        super().__init__(config=config)
        self.context = tls.context(endpoint.ca_file, endpoint.verify)  # one per protocol, shared by its sessions
        self.allow = allow
        # exchangelib hands TIMEOUT to requests: connect within `timeout`, the answer within the final one
        self.TIMEOUT = (endpoint.timeout, endpoint.final_reply_timeout)

    def decrease_poolsize(self) -> None:
        """Never shrink: exchangelib shrinks holding the pool lock while it may wait for that lock again (a
        deadlock between threads), and a busy server's mail is retried on deskmail's schedule anyway."""
        raise SessionPoolMinSizeReached("the session pool keeps its size")

    def close_sessions(self) -> None:
        """Close the idle sessions; unlike close(), safe while other threads take and return sessions."""
        with self._session_pool_lock:
            self.close()



def pinned(session: requests.Session, prefix: str, context: ssl.SSLContext, allow: tuple) -> requests.Session:
    """An exchangelib session made to use pinned HTTPS with `context`, and of the environment only its proxy for
    prefix (no .netrc or CA bundle); one connection per session (exchangelib pools sessions, each holds one)."""
    session.trust_env = False
    session.proxies = https.environ_proxies(prefix)
    session.mount(prefix, https.PinnedAdapter(context, allow, pool_connections=1, pool_maxsize=1, pool_block=True,
                                              max_retries=0))
    return session


def policy() -> FailFast:
    """The retry policy every EWS configuration of ours uses."""
    return _Policy()
