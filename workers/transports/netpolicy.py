"""Admin-configured hosts are an SSRF vector: resolve once, check, connect to the checked address."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from deskmail.workers.transports.base import Outcome, TransportFailure

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not globally routable although some Python versions' `is_global` says they are (IANA's special-purpose
# registries): shared address space, IETF protocol assignments, the deprecated 6to4 relay anycast, site-local.
_NOT_GLOBAL = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "fec0::/10", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:db8::/32", "5f00::/16",
))
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("100.100.100.200"),
             ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded(ip: Address) -> list[Address]:
    """Every IPv4 address ip carries: IPv4-mapped, IPv4-compatible, 6to4, Teredo (server and client) and
    well-known NAT64; a packet to such an IPv6 address ends at (or is routed by) the IPv4 one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[Address] = []
    if _translated(ip):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    return found


def _translated(ip: ipaddress.IPv6Address) -> bool:
    """IPv4-mapped, well-known NAT64 or the deprecated IPv4-compatible form: only the IPv4 address counts."""
    return ip.ipv4_mapped is not None or ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1)


def forbidden(ip: Address) -> str | None:
    """Why outbound mail may not go to ip (it, or an IPv4 address it wraps, is not globally routable), or None."""
    inner = embedded(ip)
    if not (isinstance(ip, ipaddress.IPv6Address) and _translated(ip)):  # their prefixes are "reserved"
        why = _not_global(ip)
        if why:
            return why
    for candidate in inner:
        why = _not_global(candidate)
        if why:
            return f"wraps {candidate}, {why}"
    return None


def _not_global(ip: Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip in _METADATA:
        return "cloud metadata"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global or any(ip in net for net in _NOT_GLOBAL if net.version == ip.version):
        return "not globally routable"
    return None


def allowed(ip: Address, allow: Iterable[Network]) -> bool:
    """True when the outbound policy lets mail go to ip: globally routable, or in DESKMAIL_OUTBOUND_ALLOW (the
    only way around it; an IPv4-mapped address counts as its IPv4 address, the same host)."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if any(ip in net or (mapped is not None and mapped in net) for net in allow):
        return True
    return forbidden(ip) is None


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
        address = info[4][0]  # text for IPv4 and IPv6 (a scope such as "%eth0" is stripped); ints too are IPs
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        if allowed(ip, allow):
            kept.append(info)
        else:
            refused.append(f"{ip} ({forbidden(ip)})")
    if not kept:
        raise TransportFailure(
            Outcome.CONFIGURATION,
            f"host {host!r} resolves only to addresses outbound mail may not use: {', '.join(refused)}; "
            "an operator may allow them with DESKMAIL_OUTBOUND_ALLOW")
    return kept


def connect(host: str, port: int, allow: Iterable[Network], timeout: float | None) -> socket.socket:
    """A TCP connection to the first checked address of host that answers (timeout None: blocking)."""
    return connect_to(resolve(host, port, allow), host, port, timeout)


def connect_to(infos: list[tuple], host: str, port: int, timeout: float | None) -> socket.socket:
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
