"""HTTPS to admin-configured endpoints (token authority, Graph, EWS), one way for every HTTP transport.

Connections go only to addresses the outbound policy checked (not to what DNS says later), and trust what SMTP
and the Test action trust: the project's ca_file, else the system store, never a CA bundle from the environment
(requests would prefer REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE to the system store). The one thing taken from the
environment is a proxy (HTTPS_PROXY, ALL_PROXY, NO_PROXY): through it, the proxy resolves, connects and decides
what may be reached, and TLS still runs end to end with the project's trust. A connection that fails while
waiting for an answer says so, because a request that went out may have been acted on; https_failures tells
every transport what such a failure means.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import socket
import ssl
import time
import urllib.parse
from typing import Any, Iterable, Iterator

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from deskmail.workers.transports import netpolicy, tls
from deskmail.workers.transports.base import Outcome, TransportFailure

MAX_RETRY_AFTER = 86400.0


class AnswerLost(OSError):
    """The connection failed while waiting for the answer to a request that was sent whole."""


class Refused(urllib3.exceptions.NewConnectionError):
    """No connection: the outbound policy refused the address, or nothing answered there."""

    def __init__(self, conn: HTTPConnection, failure: TransportFailure) -> None:
        super().__init__(conn, failure.detail)
        self.failure = failure


# What a failure looks like when the request went out whole and its answer did not come: maybe acted on.
ANSWER_LOST = (AnswerLost, urllib3.exceptions.ReadTimeoutError, requests.ReadTimeout)


class _AnswerAwareHTTPSConnection(HTTPSConnection):
    """Tells a lost answer from a failed request."""

    def getresponse(self):  # noqa: ANN201 - urllib3's signature
        try:
            return super().getresponse()
        except TimeoutError:
            raise  # urllib3 reports it as a read timeout
        except (OSError, http.client.HTTPException) as exc:
            raise AnswerLost(f"{type(exc).__name__}: {exc}") from exc


class _PinnedHTTPSConnection(_AnswerAwareHTTPSConnection):
    """Connects only to addresses the outbound policy allows, and tells a lost answer from a failed request."""

    allow: tuple = ()

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:
            sock = netpolicy.connect(self._dns_host, self.port, self.allow, timeout)
        except TransportFailure as failure:
            raise Refused(self, failure) from None  # urllib3 and requests pass it on as a failed connect
        for option in self.socket_options or ():
            sock.setsockopt(*option)
        return sock


# Through a proxy (CONNECT) the proxy resolves and connects, and decides what may be reached.
_ProxiedPool = type("ProxiedHTTPSConnectionPool", (HTTPSConnectionPool,),
                    {"ConnectionCls": _AnswerAwareHTTPSConnection})


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies the environment names for url (HTTPS_PROXY, ALL_PROXY, minus NO_PROXY); the only thing
    deskmail's HTTPS takes from the environment (never a CA bundle or .netrc credentials)."""
    return requests.utils.get_environ_proxies(url)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for url, or None."""
    return requests.utils.select_proxy(url, environ_proxies(url))


@functools.lru_cache(maxsize=None)
def pool_class(allow: tuple) -> type[HTTPSConnectionPool]:
    """An HTTPS pool class whose connections obey the outbound policy `allow` (one class per policy)."""
    connection = type("PinnedHTTPSConnection", (_PinnedHTTPSConnection,), {"allow": allow})
    return type("PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": connection})


class PinnedAdapter(HTTPAdapter):
    """requests' adapter over pinned HTTPS connections, verified with `context` whatever `verify` says."""

    def __init__(self, context: ssl.SSLContext, allow: Iterable = (), **options: Any) -> None:
        self._context = context
        self._pool = pool_class(tuple(allow))  # read by init_poolmanager, which HTTPAdapter.__init__ calls
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool}  # no plain-http pool to fall back on

    def build_connection_pool_key_attributes(self, request, verify, cert=None):  # noqa: ANN001, ANN201
        host_params, _ = super().build_connection_pool_key_attributes(request, True, cert)
        return host_params, {"ssl_context": self._context}

    def cert_verify(self, conn, url, verify, cert) -> None:  # noqa: ANN001
        """Nothing to add: the pool's SSL context holds the trust (a CA bundle here would widen it)."""

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """requests' proxy manager, whose connections tell a lost answer from a failed request too."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _ProxiedPool}
        return manager


class PolicySession(requests.Session):
    """A requests session for https only, through the outbound policy, with the project's trust and a timeout."""

    def __init__(self, allow: Iterable = (), *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        """Raises TransportFailure when ca_file cannot be used."""
        super().__init__()
        self.trust_env = False  # no CA bundle or .netrc from the environment; its proxies come in request()
        self.timeout = timeout
        self.mount("https://", PinnedAdapter(tls.context(ca_file), allow))

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """requests' request, refusing plain http and filling in the session's timeout."""
        _https_only(url)
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("proxies", environ_proxies(url))
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """requests' send; a refused connect raises its TransportFailure."""
        _https_only(request.url)  # redirects are sent without request(): one to http would leave the policy
        try:
            return super().send(request, **kwargs)
        except requests.ConnectionError as exc:
            refused = next((c for c in causes(exc) if isinstance(c, Refused)), None)
            if refused is None:
                raise
            raise refused.failure from None


def _https_only(url: object) -> None:
    if not str(url).lower().startswith("https://"):
        raise TransportFailure(Outcome.CONFIGURATION, f"{url} is not an https URL; tokens go over https only")


def host_port(url: str) -> tuple[str, int]:
    """The host and port a URL connects to."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or (80 if parts.scheme.lower() == "http" else 443)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and all it wraps: causes, contexts, and what requests and urllib3 carry in `reason` and args."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            nested = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
            pending += [n for n in nested if isinstance(n, BaseException)]


def root_cause(exc: BaseException) -> BaseException:
    """The innermost error under requests' and urllib3's wrappers (e.g. the ssl.SSLError of a failed handshake)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
