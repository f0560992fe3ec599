"""One classifier for HTTPS connection failures: each outcome, from what requests and urllib3 really raise
against a loopback peer that misbehaves on purpose."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from deskmail.workers.transports import tls
from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.https import PinnedAdapter, PolicySession
from deskmail.workers.transports.https_failures import Broke, ConnectionFailure, connection_failure
from tests.peers.net import bound_socket, free_port
from tests.peers.tlsca import CertPair, TestCA, server_context

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
BODY = b"x" * 1000


class Peer:
    """A TLS listener on 127.0.0.1 that runs `behave` on each connection it accepts."""

    def __init__(self, pair: CertPair | None, behave: Callable[[socket.socket], None]) -> None:
        self.sock = bound_socket()
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.context = server_context(pair) if pair else None
        self.behave = behave
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.context is not None:
                    conn = self.context.wrap_socket(conn, server_side=True)
                self.behave(conn)
            except (OSError, ssl.SSLError):
                pass  # the client gave up first: what it raised is the test's concern
            finally:
                conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def read_request(conn: socket.socket) -> None:
    """Read the request head and the body the test sends."""
    seen = b""
    while b"\r\n\r\n" not in seen or len(seen.partition(b"\r\n\r\n")[2]) < len(BODY):
        chunk = conn.recv(65536)
        if not chunk:
            return
        seen += chunk


def hang_up(conn: socket.socket) -> None:
    """Take the whole request, then close without a word."""
    read_request(conn)


def stall(conn: socket.socket) -> None:
    """Take the whole request, then say nothing until the client gives up."""
    read_request(conn)
    conn.settimeout(5)
    conn.recv(1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def peer(ca: TestCA) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(behave: Callable[[socket.socket], None], pair: CertPair | None = None) -> Peer:
        started.append(Peer(pair or ca.issue(), behave))
        return started[-1]

    yield start
    for one in started:
        one.close()


def raised(call: Callable[[], object]) -> BaseException:
    """What call raised (it must raise)."""
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def post(ca_path: Path, port: int, path: str = "/", **options: object) -> Callable[[], object]:
    """A POST through deskmail's PolicySession, trusting the test CA, loopback allowed."""
    def call() -> object:
        with PolicySession(LOOPBACK, ca_file=str(ca_path), timeout=5) as session:
            return session.post(f"https://127.0.0.1:{port}{path}", data=BODY, **options)  # type: ignore[arg-type]
    return call


def classify(exc: BaseException, port: int, *, sends: bool = True) -> ConnectionFailure | None:
    return connection_failure(exc, "127.0.0.1", port, sends=sends, noun="Exchange")


def test_an_answer_lost_after_the_message_went_out_is_ambiguous(peer, ca):
    server = peer(hang_up)
    exc = raised(post(ca.ca_path, server.port))
    assert isinstance(exc, requests.ConnectionError)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.ANSWER_LOST, Outcome.AMBIGUOUS)
    assert found.problem == (f"no answer from Exchange at 127.0.0.1:{server.port} after the message was sent "
                             "(RemoteDisconnected: Remote end closed connection without response); it may or may "
                             "not have been taken")
    assert found.advice == ""


def test_a_read_timeout_after_the_message_went_out_is_ambiguous(peer, ca):
    server = peer(stall)
    exc = raised(post(ca.ca_path, server.port, timeout=(5, 0.3)))
    assert isinstance(exc, requests.ReadTimeout)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.ANSWER_LOST, Outcome.AMBIGUOUS)


def broken_body(conn: socket.socket) -> None:
    """Take the whole request, answer 200 and break off inside the chunked body."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n<soap")


def corrupt_gzip(conn: socket.socket) -> None:
    """Take the whole request, answer 200 with a gzip body that is not gzip."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip at!")


def test_an_answer_whose_body_cannot_be_decoded_after_the_message_went_out_is_ambiguous(peer, ca):
    server = peer(corrupt_gzip)
    exc = raised(post(ca.ca_path, server.port))
    assert isinstance(exc, requests.exceptions.ContentDecodingError)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.ANSWER_LOST, Outcome.AMBIGUOUS)


def test_an_answer_whose_body_breaks_off_after_the_message_went_out_is_ambiguous(peer, ca):
    server = peer(broken_body)
    exc = raised(post(ca.ca_path, server.port))
    assert isinstance(exc, requests.exceptions.ChunkedEncodingError)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.ANSWER_LOST, Outcome.AMBIGUOUS)
    sends_nothing = classify(exc, server.port, sends=False)
    assert sends_nothing is not None and sends_nothing.outcome is Outcome.TRANSIENT


def test_an_answer_lost_to_a_request_that_sends_nothing_is_transient(peer, ca):
    server = peer(hang_up)
    found = classify(raised(post(ca.ca_path, server.port)), server.port, sends=False)
    assert found is not None and (found.kind, found.outcome) == (Broke.NOT_SENT, Outcome.TRANSIENT)
    assert found.problem.startswith(f"connection to Exchange at 127.0.0.1:{server.port} failed before the message "
                                    "was sent (RemoteDisconnected")


def test_an_address_the_outbound_policy_refuses_keeps_the_policys_outcome_and_words(peer, ca):
    server = peer(hang_up)
    with requests.Session() as session:  # the adapter alone: PolicySession would raise the policy's failure itself
        session.mount("https://", PinnedAdapter(tls.context(str(ca.ca_path)), allow=()))
        exc = raised(lambda: session.post(f"https://127.0.0.1:{server.port}/", data=BODY, timeout=5))
    assert isinstance(exc, requests.ConnectionError)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.REFUSED, Outcome.CONFIGURATION)
    assert "127.0.0.1" in found.problem and "DESKMAIL_OUTBOUND_ALLOW" in found.detail


def test_a_self_signed_certificate_is_a_tls_problem_with_tls_advice(peer, ca):
    server = peer(hang_up, ca.self_signed())
    exc = raised(post(ca.ca_path, server.port))
    assert isinstance(exc, requests.exceptions.SSLError)
    found = classify(exc, server.port)
    assert found is not None and (found.kind, found.outcome) == (Broke.TLS, Outcome.CONFIGURATION)
    assert found.problem.startswith(f"127.0.0.1:{server.port} presents a self-signed certificate")
    assert "ca_file" in found.advice and found.detail == f"{found.problem}; {found.advice}"


def test_a_proxy_that_cannot_be_reached_fails_before_the_message_was_sent(ca):
    closed = free_port()
    exc = raised(post(ca.ca_path, 443, proxies={"https": f"http://127.0.0.1:{closed}"}))
    assert isinstance(exc, requests.exceptions.ProxyError)
    found = classify(exc, 443)
    assert found is not None and (found.kind, found.outcome) == (Broke.NOT_SENT, Outcome.TRANSIENT)
    assert found.problem == ("connection to Exchange at 127.0.0.1:443 failed before the message was sent "
                             "(ConnectionRefusedError: Connection refused)")


def test_what_the_request_asked_for_stays_out_of_the_words(ca):
    closed = free_port()
    exc = raised(post(ca.ca_path, 443, "/upload?authtoken=Canary-Upload-Token",
                      proxies={"https": f"http://127.0.0.1:{closed}"}))
    assert "Canary" in str(exc)  # requests' and urllib3's own words carry the URL
    found = classify(exc, 443)
    assert found is not None and "Canary" not in found.detail


def test_an_answer_that_is_not_a_connection_failure_is_left_to_the_transport():
    exc = raised(lambda: json.loads("<html>busy</html>"))
    assert classify(exc, 443) is None
    assert classify(ValueError("Unable to get authority configuration"), 443) is None
