"""Admin-configured hosts are an SSRF vector: resolve once, check, connect to the checked address."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from workers.transports.base import Outcome, TransportFailure

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or str(ip) in ("169.254.169.254", "fd00:ec2::254"):
        return "link-local or cloud metadata"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    return None


def resolve(host: str, port: int, allow: Iterable[Network]) -> list[tuple]:
    """getaddrinfo results for host, keeping only addresses the outbound policy permits (getaddrinfo takes no
    timeout: the system resolver's own bounds the lookup)."""
    allow = tuple(allow)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransportFailure(Outcome.CONFIGURATION, f"cannot resolve host {host!r}: {exc.strerror}") from exc
    kept, refused = [], []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        why = _forbidden(ip)
        if why is None or any(ip in net for net in allow):
            kept.append(info)
        else:
            refused.append(f"{ip} ({why})")
    if not kept:
        raise TransportFailure(
            Outcome.CONFIGURATION,
            f"host {host!r} resolves only to addresses outbound mail may not use: {', '.join(refused)}; "
            "an operator may allow them with DESKMAIL_OUTBOUND_ALLOW")
    return kept


def connect(host: str, port: int, allow: Iterable[Network], timeout: float) -> socket.socket:
    """A TCP connection to the first checked address of host that answers."""
    return connect_to(resolve(host, port, allow), host, port, timeout)


def connect_to(infos: list[tuple], host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses `infos` (from resolve) that answers."""
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise TransportFailure(Outcome.TRANSIENT, f"cannot connect to {host}:{port}: {_os_words(last)}")


def _os_words(exc: OSError | None) -> str:
    if isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout):
        return "timed out"
    return (exc.strerror or str(exc)) if exc else "no address"
