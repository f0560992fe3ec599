"""How an HTTPS request failed to get an answer, told once for every HTTP transport (EWS, Graph, Autodiscover,
the token endpoints).

One table, first matching row wins, each row looked for in everything the exception wraps (https.causes):
the answer was lost after a request that hands over the message went out whole (it may have been acted on:
ambiguous), the outbound policy refused the address (its own outcome), TLS failed (tls.problem's words and
advice), or the connection failed before the request went out, or before a request that sends nothing got
its answer (transient). A lost answer comes first: where a chain holds one, sending again could send twice.
"""

from __future__ import annotations

import enum
import http.client
import ssl
from dataclasses import dataclass

import requests
import urllib3.exceptions

from deskmail.workers.transports import tls
from deskmail.workers.transports.base import Outcome, TransportFailure, advised
from deskmail.workers.transports.https import ANSWER_LOST, Refused, causes

WHY_LIMIT = 160


class Broke(enum.StrEnum):
    """What went wrong with the connection."""

    ANSWER_LOST = "answer lost"  # after the request that hands over the message went out whole
    REFUSED = "refused"          # by the outbound policy, or nothing answered at the addresses it allows
    TLS = "tls"                  # the handshake or the certificate
    NOT_SENT = "not sent"        # before the request went out, or the request sends nothing


@dataclass(frozen=True)
class Row:
    """One row: the kind of failure, the exceptions that show it anywhere in the chain, its outcome and words
    ({noun}, {where} as host:port, {why}: the innermost error)."""

    kind: Broke
    types: tuple[type[BaseException], ...]
    outcome: Outcome | None = None  # None: the outbound policy's own outcome and words
    words: str = ""                 # "": the failure's own words (the policy's, or tls.problem's)
    sending_only: bool = False      # the row applies only to a request that hands over the message


ROWS: tuple[Row, ...] = (
    # A body that breaks off (chunked encoding, fewer bytes than announced) or cannot be decoded (a corrupt
    # gzip) is read only after the server answered the request: it was taken whole, and may have been acted on.
    Row(Broke.ANSWER_LOST, (*ANSWER_LOST, requests.exceptions.ChunkedEncodingError, http.client.IncompleteRead,
                            requests.exceptions.ContentDecodingError),
        Outcome.AMBIGUOUS,
        "no answer from {noun} at {where} after the message was sent ({why}); it may or may not have been taken",
        sending_only=True),
    Row(Broke.REFUSED, (Refused,)),
    Row(Broke.TLS, (ssl.SSLError, ssl.CertificateError), Outcome.CONFIGURATION),
    Row(Broke.NOT_SENT, (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, OSError),
        Outcome.TRANSIENT, "connection to {noun} at {where} failed before the message was sent ({why})"),
)


@dataclass(frozen=True)
class ConnectionFailure:
    """A classified connection failure: what the user reads (problem, then what to change) and its outcome."""

    kind: Broke
    outcome: Outcome
    problem: str
    advice: str = ""

    @property
    def detail(self) -> str:
        """The problem followed by the advice, as a mail's record keeps it."""
        return f"{self.problem}; {self.advice}" if self.advice else self.problem

    def failure(self, *, step: str | None = None) -> TransportFailure:
        """The TransportFailure the transports raise for it."""
        return advised(self.outcome, self.problem, self.advice, step=step)


def connection_failure(exc: BaseException, host: str, port: int, *, sends: bool,
                       noun: str) -> ConnectionFailure | None:
    """What failed when a request to host:port raised exc, or None when exc is no connection failure. `sends`:
    the request hands over the message (a lost answer may mean it was taken); `noun` names the service
    ("Exchange", "Graph", ...) in the words."""
    chain = list(causes(exc))
    for row in ROWS:
        cause = next((c for c in chain if isinstance(c, row.types)), None)
        if cause is not None and (sends or not row.sending_only):
            return _worded(row, cause, host, port, noun)
    return None


def _worded(row: Row, cause: BaseException, host: str, port: int, noun: str) -> ConnectionFailure:
    if isinstance(cause, Refused):
        refused = cause.failure
        return ConnectionFailure(row.kind, refused.outcome, refused.problem, refused.advice or "")
    assert row.outcome is not None  # only the Refused row takes its outcome from the failure
    if not row.words:
        return ConnectionFailure(row.kind, row.outcome, *tls.problem(host, port, cause))
    return ConnectionFailure(row.kind, row.outcome, row.words.format(noun=noun, where=f"{host}:{port}",
                                                                     why=_why(cause)))


def _why(cause: BaseException) -> str:
    """The innermost error's name and, for a socket's or HTTP's own error, its words. The words of requests'
    and urllib3's wrappers are left out: they carry the request's URL, whose query may hold a credential
    (Graph's upload URLs do)."""
    *_, inner = causes(cause)  # the last one found is the innermost (ProtocolError keeps it in args[1])
    name = type(inner).__name__
    if isinstance(inner, (requests.RequestException, urllib3.exceptions.HTTPError)) or \
            not isinstance(inner, (OSError, http.client.HTTPException)):
        return name
    words = " ".join(str(getattr(inner, "strerror", None) or inner).split())
    if not words:
        return name
    return f"{name}: {words[:WHY_LIMIT]}" + ("..." if len(words) > WHY_LIMIT else "")
