"""Names of test mail domains that lead to a local peer: the tests' stand-in for DNS and a port forward.

Autodiscover derives its URLs from the sender's domain, always on port 443. getaddrinfo follows this machine's
resolver configuration, which tests must not change, so while `served_names` is entered the names given resolve
to 127.0.0.1 with port 443 forwarded to the peer's port, other names under the given domains do not exist, and
every other name resolves as usual. Nothing else is faked: the connection, TLS (verified against the name) and
HTTP are real.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterable, Iterator
from unittest import mock


@contextmanager
def served_names(domains: Iterable[str], names: dict[str, int]) -> Iterator[None]:
    """Resolve `names` (name -> the peer's port, for port 443) to 127.0.0.1; other names in `domains` fail."""
    domains = tuple(d.lower() for d in domains)
    served = {name.lower(): port for name, port in names.items()}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002, ANN001, ANN202 - socket's
        name = str(host).lower().rstrip(".")
        if name in served:
            forwarded = served[name] if str(port) in ("443", "https") else int(port)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", forwarded))]
        if any(name == d or name.endswith("." + d) for d in domains):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, family, type, proto, flags)

    with mock.patch("socket.getaddrinfo", getaddrinfo):
        yield
