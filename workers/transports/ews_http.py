"""The HTTP side of EWS: exchangelib protocols with per-endpoint timeouts, TLS trust and outbound policy.

exchangelib keeps process-wide state (a protocol cache keyed by endpoint and credentials, a global HTTP adapter
class, a global timeout). EwsProtocol uses none of it: its sessions carry the endpoint's timeouts, the project's
TLS trust (the system store or ca_file, never a CA bundle from the environment) and connections only to addresses
the outbound policy checked, and whoever opens one closes it.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

import requests
import urllib3.exceptions
from exchangelib import Configuration, FailFast
from exchangelib.errors import SessionPoolMinSizeReached, TransportError, UnauthorizedError
from exchangelib.protocol import CachingProtocol, Protocol
from exchangelib.util import is_xml
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from workers.transports import netpolicy, tls
from workers.transports.base import TransportFailure
from workers.transports.https import retry_after


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
        self.retry_after = retry_after(response.headers.get("Retry-After"))
        super().__init__(f"HTTP {self.status} {self.reason}".strip())


class AnswerLost(OSError):
    """The connection failed while waiting for the answer to a request that was sent whole."""


class Refused(urllib3.exceptions.NewConnectionError):
    """No connection: the outbound policy refused the address, or nothing answered there."""

    def __init__(self, conn: object, failure: TransportFailure) -> None:
        super().__init__(conn, failure.detail)
        self.failure = failure


class _PinnedHTTPSConnection(HTTPSConnection):
    """Connects only to addresses the outbound policy allows, and tells a lost answer from a failed request."""

    allow: tuple = ()

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:
            sock = netpolicy.connect(self._dns_host, self.port, self.allow, timeout)
        except TransportFailure as failure:
            raise Refused(self, failure) from None
        for option in self.socket_options or ():
            sock.setsockopt(*option)
        return sock

    def getresponse(self):  # noqa: ANN201 - urllib3's signature
        try:
            return super().getresponse()
        except TimeoutError:
            raise  # urllib3 reports it as a read timeout
        except (OSError, http.client.HTTPException) as exc:
            raise AnswerLost(f"{type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=None)
def _pool_class(allow: tuple) -> type[HTTPSConnectionPool]:
    """An HTTPS pool class whose connections obey the outbound policy `allow` (one class per policy)."""
    connection = type("PinnedHTTPSConnection", (_PinnedHTTPSConnection,), {"allow": allow})
    return type("PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": connection})


class _Adapter(requests.adapters.HTTPAdapter):
    """One endpoint's connections, verified with the project's TLS trust whatever `verify` says."""

    def __init__(self, context: ssl.SSLContext, allow: tuple) -> None:
        self._context = context
        self._pool = _pool_class(allow)
        super().__init__(pool_connections=1, pool_maxsize=1, pool_block=True, max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - requests' signature
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool}

    def build_connection_pool_key_attributes(self, request, verify, cert=None):  # noqa: ANN001, ANN201
        host_params, _ = super().build_connection_pool_key_attributes(request, True, cert)
        return host_params, {"ssl_context": self._context}

    def cert_verify(self, conn, url, verify, cert) -> None:  # noqa: ANN001
        """Nothing to add: the pool's SSL context holds the trust (a CA bundle here would widen it)."""


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


class EwsProtocol(Protocol, metaclass=_Uncached):
    """An exchangelib protocol with the endpoint's timeouts, TLS trust and outbound policy."""

    RETRY_WAIT = 0  # no back-off guess of exchangelib's own: the server's back-off or our schedule decides

    def __init__(self, config: Configuration, endpoint: Endpoint, allow: tuple) -> None:
        """Raises OSError or ssl.SSLError when the endpoint's ca_file cannot be used."""
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

    def raw_session(self, prefix: str, oauth2_client=None, oauth2_session_params=None,  # noqa: ANN001
                    oauth2_token_endpoint=None) -> requests.Session:  # noqa: ANN001
        """exchangelib's session with our adapter, and no proxies, netrc or CA bundle from the environment."""
        session = super().raw_session(prefix, oauth2_client, oauth2_session_params, oauth2_token_endpoint)
        session.trust_env = False
        session.mount(prefix, _Adapter(self.context, self.allow))
        return session


def policy() -> FailFast:
    """The retry policy every EWS configuration of ours uses."""
    return _Policy()
