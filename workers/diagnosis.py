"""The Test action's record: named steps with their outcome, stopping at the first failure.

Every transport diagnoses its own route with the same vocabulary of steps, so an admin reads one
shape of report whatever the mail service: (autodiscover,) name resolution, TCP connect, TLS, capabilities,
token, authentication, sender, send.
"""

from __future__ import annotations

import base64
import enum
import socket
import ssl
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, NoReturn

import requests.utils

from workers.transports import https, netpolicy, tls
from workers.transports.base import Outcome, TransportFailure

DISCOVER = "autodiscover"
RESOLVE, CONNECT, TLS, CAPABILITIES = "name resolution", "TCP connect", "TLS", "capabilities"
TOKEN, AUTHENTICATION, SENDER, SEND = "token", "authentication", "sender", "send"

ADVICE = {
    Outcome.TRANSIENT: "the server or network is failing for now; try again later, or check that nothing "
                       "between here and the server blocks the connection",
    Outcome.PERMANENT: "the server refused the mail; its words above say why",
    Outcome.CONFIGURATION: "fix the project's mail settings",
    Outcome.AMBIGUOUS: "the server did not answer after the message was sent; look in the recipient's mailbox "
                       "before trying again",
    Outcome.QUOTA: "the provider's sending quota for this account is used up; wait until it resets",
}


class Status(enum.StrEnum):
    """How a step ended."""

    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    """One step of a Test action; detail and advice never hold a secret."""

    name: str
    status: Status
    detail: str
    advice: str = ""


class Stop(Exception):
    """A step failed: the checkup ends here."""


@dataclass
class Note:
    """What a step's body tells about it when it passes."""

    detail: str = ""


def _unchanged(text: str) -> str:
    return text


@dataclass
class Checkup:
    """The steps of one Test action, in order; `scrub` masks the project's secrets in what peers said
    (workers.scrub), before a step keeps it."""

    steps: list[Step] = field(default_factory=list)
    scrub: Callable[[str], str] = _unchanged

    def passed(self, name: str, detail: str) -> None:
        """Record a passed step."""
        self.steps.append(Step(name, Status.PASSED, self.scrub(detail)))

    def failed(self, name: str, detail: str, advice: str) -> NoReturn:
        """Record a failed step and end the checkup."""
        self.steps.append(Step(name, Status.FAILED, self.scrub(detail), self.scrub(advice)))
        raise Stop(name)

    def failed_with(self, name: str, failure: TransportFailure, advice: str = "") -> NoReturn:
        """Record step `name` as failed by `failure`, with the given advice, else the failure's, else the
        outcome's, and end the checkup."""
        self.failed(name, failure.problem, advice or failure.advice or ADVICE[failure.outcome])

    @contextmanager
    def step(self, name: str, advice: str | Callable[[TransportFailure], str] = "") -> Iterator[Note]:
        """Run a step's body: a TransportFailure fails the step (see failed_with)."""
        note = Note()
        try:
            yield note
        except TransportFailure as failure:
            self.failed_with(name, failure, advice(failure) if callable(advice) else advice)
        self.passed(name, note.detail)

    @property
    def accepted(self) -> bool:
        """True only when the last step is a passed send."""
        return bool(self.steps) and self.steps[-1].name == SEND and self.steps[-1].status is Status.PASSED

    def as_dict(self) -> dict:
        """The steps, machine-readably."""
        return {"accepted": self.accepted, "steps": [asdict(step) for step in self.steps]}


def connect(checkup: Checkup, host: str, port: int, *, allow: Iterable = (), timeout: float = 30.0) -> socket.socket:
    """The name resolution and TCP connect steps; the caller owns (and closes) the socket."""
    with checkup.step(RESOLVE, "check the host name in the settings, and this host's DNS") as note:
        infos = netpolicy.resolve(host, port, allow)
        note.detail = f"{host} is {', '.join(sorted({info[4][0] for info in infos}))}"
    with checkup.step(CONNECT, f"check the port ({port}) and that a firewall lets this host reach "
                               f"{host}:{port}") as note:
        sock = netpolicy.connect_to(infos, host, port, timeout)
        note.detail = f"connected to {host}:{port}"
    return sock


def trust(checkup: Checkup, ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """The TLS context to secure with; an unusable ca_file fails the TLS step (before anything connects)."""
    try:
        return tls.context(ca_file, verify)
    except TransportFailure as failure:
        checkup.failed_with(TLS, failure)


def secure(checkup: Checkup, sock: socket.socket, host: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """The TLS step: a verified handshake on a connected socket."""
    try:
        secured = context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        sock.close()
        checkup.failed(TLS, *tls.problem(host, port, exc))
    except OSError as exc:
        sock.close()
        checkup.failed(TLS, f"{host}:{port} closed or stalled the connection during the TLS handshake ({exc})",
                       "check that this port speaks TLS at once (an HTTPS or implicit-TLS port)")
    checkup.passed(TLS, f"{secured.version()}, certificate of {host} verified"
                   if context.verify_mode != ssl.CERT_NONE else f"{secured.version()}, certificate NOT verified")
    return secured


def https_endpoint(checkup: Checkup, url: str, *, ca_file: str | None = None, verify: bool = True,
                   allow: Iterable = (), timeout: float = 30.0) -> None:
    """Name resolution, TCP connect and TLS for an https URL (token authority, Graph, EWS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        checkup.failed(RESOLVE, f"{url!r} is not an https URL", "give the endpoint as https://host/path")
    port = parts.port or 443
    context = trust(checkup, ca_file, verify)
    proxy = https.proxy_for(url)
    if proxy is None:
        sock = connect(checkup, parts.hostname, port, allow=allow, timeout=timeout)
    elif urllib.parse.urlsplit(proxy).scheme.lower() == "http":
        sock = tunnel(checkup, proxy, parts.hostname, port, timeout)
    else:
        return  # a TLS or SOCKS proxy: the steps that send show whether it carries the request
    secure(checkup, sock, parts.hostname, port, context).close()


def tunnel(checkup: Checkup, proxy: str, host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connect step through the environment's http proxy: a CONNECT tunnel to host:port, as requests
    opens one (the proxy resolves and reaches the host; the outbound policy is the proxy's)."""
    parts = urllib.parse.urlsplit(proxy)
    where = f"the proxy {parts.hostname}:{parts.port or 80} (from HTTPS_PROXY or ALL_PROXY)"
    change = f"check {where}, or name {host} in NO_PROXY if it is to be reached directly"
    try:
        sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout)
    except OSError as exc:
        checkup.failed(CONNECT, f"cannot connect to {where}: {exc.strerror or exc}", change)
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
        checkup.failed(CONNECT, f"{where} closed or stalled the connection ({exc})", change)
    status = lines[0].decode("latin-1").strip()
    if status.split(" ", 2)[1:2] != ["200"]:
        sock.close()
        checkup.failed(CONNECT, f"{where} refused a tunnel to {host}:{port}: {status or 'no answer'}", change)
    checkup.passed(CONNECT, f"{where} opened a tunnel to {host}:{port}")
    return sock
