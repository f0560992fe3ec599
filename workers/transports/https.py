"""HTTPS to admin-configured endpoints (token authority, Graph): the outbound policy on every connection,
the configured CA and a timeout on every request."""

from __future__ import annotations

import email.utils
import socket
import time
from typing import Any, Iterable

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from workers.transports import netpolicy
from workers.transports.base import Outcome, TransportFailure

MAX_RETRY_AFTER = 86400.0


def _checked_pool(allow: tuple) -> type[HTTPSConnectionPool]:
    """An HTTPS pool class whose connections go to addresses netpolicy checked, not to what DNS says later."""

    class CheckedConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
            sock = netpolicy.connect(self._dns_host, self.port, allow, timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # urllib3 sets it on its own sockets too
            return sock

    class CheckedPool(HTTPSConnectionPool):
        ConnectionCls = CheckedConnection

    return CheckedPool


class _PolicyAdapter(HTTPAdapter):
    """requests' adapter with the checked HTTPS pool; a refused or failed connect raises TransportFailure."""

    def __init__(self, allow: tuple) -> None:
        self.allow = allow  # read by init_poolmanager, which HTTPAdapter.__init__ calls
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme,
                                                   "https": _checked_pool(self.allow)}


class PolicySession(requests.Session):
    """A requests session for https URLs only, through the outbound policy, with a default CA and timeout.

    The CA is passed with every request because requests prefers REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
    over a session's `verify`, but never over a path given to the request itself. Proxies from the
    environment still apply; a proxied request is checked by the proxy, not here.
    """

    def __init__(self, allow: Iterable = (), *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        self.ca_file, self.timeout = ca_file, timeout
        self.mount("https://", _PolicyAdapter(tuple(allow)))

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """requests' request, refusing plain http and filling in timeout and CA."""
        if not str(url).lower().startswith("https://"):
            raise TransportFailure(Outcome.CONFIGURATION, f"{url} is not an https URL; tokens go over https only")
        kwargs.setdefault("timeout", self.timeout)
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.ca_file or True
        return super().request(method, url, *args, **kwargs)


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
