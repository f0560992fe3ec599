"""The network steps every route starts with: name resolution, TCP connect (directly or through the
environment's proxy) and TLS, each reported to a recorder (workers.transports.steps)."""

from __future__ import annotations

import base64
import socket
import ssl
import urllib.parse
from typing import Iterable

import requests.utils

from deskmail.workers.transports import https, netpolicy, tls
from deskmail.workers.transports.base import Outcome, TransportFailure, advised
from deskmail.workers.transports.steps import CONNECT, RESOLVE, TLS, Recorder


def connect(steps: Recorder, host: str, port: int, *, allow: Iterable = (), timeout: float = 30.0) -> socket.socket:
    """The name resolution and TCP connect steps; the caller owns (and closes) the socket."""
    with steps.step(RESOLVE, "check the host name in the settings, and this host's DNS") as note:
        infos = netpolicy.resolve(host, port, allow)
        if steps.recording:
            note.detail = f"{host} is {', '.join(sorted({info[4][0] for info in infos}))}"
    with steps.step(CONNECT, f"check the port ({port}) and that a firewall lets this host reach "
                             f"{host}:{port}") as note:
        sock = netpolicy.connect_to(infos, host, port, timeout)
        note.detail = f"connected to {host}:{port}"
    return sock


def trust(steps: Recorder, ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """The TLS context to secure with; an unusable ca_file fails the TLS step (before anything connects)."""
    try:
        return tls.context(ca_file, verify)
    except TransportFailure as failure:
        steps.failed_with(TLS, failure)


def tls_failure(host: str, port: int, exc: ssl.SSLError | ssl.CertificateError) -> TransportFailure:
    """A failed handshake or certificate check: what is wrong and what to change (the settings' to fix)."""
    return advised(Outcome.CONFIGURATION, *tls.problem(host, port, exc))


def secure(steps: Recorder, sock: socket.socket, host: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """The TLS step: a verified handshake on a connected socket."""
    try:
        secured = context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        sock.close()
        steps.failed_with(TLS, tls_failure(host, port, exc))
    except OSError as exc:
        sock.close()
        steps.failed_with(TLS, advised(
            Outcome.TRANSIENT, f"{host}:{port} closed or stalled the connection during the TLS handshake ({exc})",
            "check that this port speaks TLS at once (an HTTPS or implicit-TLS port)"))
    steps.passed(TLS, f"{secured.version()}, certificate of {host} verified"
                 if context.verify_mode != ssl.CERT_NONE else f"{secured.version()}, certificate NOT verified")
    return secured


def https_endpoint(steps: Recorder, url: str, *, ca_file: str | None = None, verify: bool = True,
                   allow: Iterable = (), timeout: float = 30.0) -> None:
    """Name resolution, TCP connect and TLS for an https URL (token authority, Graph, EWS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        steps.failed_with(RESOLVE, advised(Outcome.CONFIGURATION, f"{url!r} is not an https URL",
                                           "give the endpoint as https://host/path"))
    port = parts.port or 443
    context = trust(steps, ca_file, verify)
    proxy = https.proxy_for(url)
    if proxy is None:
        sock = connect(steps, parts.hostname, port, allow=allow, timeout=timeout)
    elif urllib.parse.urlsplit(proxy).scheme.lower() == "http":
        sock = tunnel(steps, proxy, parts.hostname, port, timeout)
    else:
        return  # a TLS or SOCKS proxy: the steps that send show whether it carries the request
    secure(steps, sock, parts.hostname, port, context).close()


def tunnel(steps: Recorder, proxy: str, host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connect step through the environment's http proxy: a CONNECT tunnel to host:port, as requests
    opens one (the proxy resolves and reaches the host; the outbound policy is the proxy's)."""
    parts = urllib.parse.urlsplit(proxy)
    where = f"the proxy {parts.hostname}:{parts.port or 80} (from HTTPS_PROXY or ALL_PROXY)"
    change = f"check {where}, or name {host} in NO_PROXY if it is to be reached directly"

    def fail(problem: str) -> TransportFailure:
        return advised(Outcome.TRANSIENT, problem, change)

    try:
        sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout)
    except OSError as exc:
        steps.failed_with(CONNECT, fail(f"cannot connect to {where}: {exc.strerror or exc}"))
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if parts.username is not None:
        credentials = ":".join(requests.utils.get_auth_from_url(proxy)).encode()
        head += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
    try:
        sock.sendall((head + "\r\n").encode())
        with sock.makefile("rb") as answer:  # nothing follows the head until the client speaks TLS
            lines = [answer.readline(1024)]
            while lines[-1].strip():
                lines.append(answer.readline(1024))
    except OSError as exc:
        sock.close()
        steps.failed_with(CONNECT, fail(f"{where} closed or stalled the connection ({exc})"))
    status = lines[0].decode("latin-1").strip()
    if status.split(" ", 2)[1:2] != ["200"]:
        sock.close()
        steps.failed_with(CONNECT, fail(f"{where} refused a tunnel to {host}:{port}: {status or 'no answer'}"))
    steps.passed(CONNECT, f"{where} opened a tunnel to {host}:{port}")
    return sock
