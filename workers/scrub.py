"""One scrubber for text from peers: a project's secrets masked, however they are encoded, before anything keeps it.

Servers echo what they were sent: an SMTP server its AUTH exchange in a 535 answer (the base64 of
`\\0user\\0password`, or the LOGIN steps), a token endpoint the form it was posted (URL-encoded). So every
text a transport gets from a peer is scrubbed here, at the transport's boundary, before it becomes a
mail's detail, a project's config_error, a log line or a step of the Test action.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
import functools
from typing import Any, Callable, Iterable

from deskmail import schemas
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports.base import Delivered, Envelope, TransportFailure

MASK = "********"
MIN_LENGTH = 4  # a shorter secret is masked only inside the encodings below, not wherever its letters occur
_URL_RUN = re.compile(r"[^\s&=\"'<>]*%[0-9A-Fa-f]{2}[^\s&=\"'<>]*")
_USER_FIELDS = ("username", "sender", "client_id", "client_email")
_CACHE_SIZE = 1024
_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], "Scrubber"] = {}
_BY_OBJECT: dict[int, tuple[ProjectSettings, "Scrubber"]] = {}


class Scrubber:
    """Masks the given secrets, and every encoding of them a peer may echo, in any text."""

    def __init__(self, secrets: Iterable[str], users: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._needles = [s.encode("utf-8") for s in self.secrets]
        users = tuple(users)
        forms = {form for secret in self.secrets for form in _forms(secret, users)}
        self._forms = sorted((f for f in forms if len(f) >= MIN_LENGTH), key=len, reverse=True)
        # A base64 run shorter than the encoding of the shortest secret cannot decode to something holding it.
        long_enough = [len(needle) for needle in self._needles if len(needle) >= MIN_LENGTH]
        shortest = max(8, 4 * min(long_enough) // 3) if long_enough else 8
        self._base64_run = re.compile(r"[A-Za-z0-9+/_-]{%d,}={0,2}" % shortest)

    @classmethod
    def of(cls, settings: ProjectSettings) -> "Scrubber":
        """The scrubber of a project's settings: every x-secret value, with the block's user names for AUTH
        blobs (kept per set of secrets: sends are a hot path)."""
        known = _BY_OBJECT.get(id(settings))
        if known is not None and known[0] is settings:  # the settings service hands out one object per version
            return known[1]
        found: list[str] = []
        for path in schemas.secret_paths(schemas.SETTINGS):
            node: Any = settings.document
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            found.extend(_strings(node))
        block = settings.block() if isinstance(settings.block(), dict) else {}
        users = [block[f] for f in _USER_FIELDS if isinstance(block.get(f), str)]
        key = (tuple(found), tuple(users))
        scrubber = _CACHE.get(key)
        if scrubber is None:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.clear()
            scrubber = _CACHE[key] = cls(found, users)
        if len(_BY_OBJECT) >= _CACHE_SIZE:
            _BY_OBJECT.clear()
        _BY_OBJECT[id(settings)] = (settings, scrubber)
        return scrubber

    def text(self, text: str) -> str:
        """text with every secret, and every base64 run that decodes to something holding one, masked."""
        if not self.secrets or not text:
            return text
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        if "%" in text:
            text = _URL_RUN.sub(self._url_run, text)
        return self._base64_run.sub(self._run, text)

    def _url_run(self, match: re.Match[str]) -> str:
        """A percent-encoded run (however much of it an encoder escaped) masked when it decodes to a secret."""
        run = match.group()
        decoded = urllib.parse.unquote_plus(run)
        return MASK if any(s in decoded for s in self.secrets if len(s) >= MIN_LENGTH) else run

    def _run(self, match: re.Match[str]) -> str:
        """A base64 run (any alignment of a secret inside a larger blob) masked when it decodes to a secret."""
        run = match.group()
        for decoded in _decodings(run):
            if any(needle in decoded for needle in self._needles if len(needle) >= MIN_LENGTH):
                return MASK
        return run

    def failure(self, failure: TransportFailure) -> TransportFailure:
        """The same failure with its texts scrubbed (in place) and its cause dropped (it may quote a secret)."""
        failure.detail = self.text(failure.detail)
        failure.problem = self.text(failure.problem)
        failure.advice = self.text(failure.advice) if failure.advice else failure.advice
        failure.refused = {address: self.text(reply) for address, reply in failure.refused.items()}
        failure.args = (failure.detail,)
        failure.__cause__, failure.__context__, failure.__suppress_context__ = None, None, True
        return failure

    def delivered(self, delivered: Delivered) -> Delivered:
        """A delivery result with the server's words scrubbed."""
        return Delivered(self.text(delivered.detail),
                         {a: self.text(r) for a, r in delivered.refused.items()},
                         {a: self.text(r) for a, r in delivered.deferred.items()})


def scrubbed(send: Callable[[Any, ProjectSettings, Envelope], Delivered]) -> Callable[..., Delivered]:
    """Decorates a transport's send: what it returns or raises leaves scrubbed of the project's secrets."""
    @functools.wraps(send)
    def scrubbed_send(transport: Any, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        scrubber = Scrubber.of(settings)
        try:
            delivered = send(transport, settings, envelope)
        except TransportFailure as failure:
            raise scrubber.failure(failure) from None
        return scrubber.delivered(delivered)
    return scrubbed_send


def _strings(node: Any) -> list[str]:
    """Every string in a secret's value (a service account key is a whole object of them)."""
    if isinstance(node, str):
        return [node, *(line for line in node.splitlines() if len(line) >= 16)]  # a PEM key's lines too
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _forms(secret: str, users: tuple[str, ...]) -> list[str]:
    """The secret as a peer may echo it: plain, JSON-escaped, URL-encoded, base64 alone or in AUTH blobs."""
    raw = secret.encode("utf-8")
    blobs = [raw, *(f"\0{user}\0{secret}".encode() for user in users),
             *(f"{user}\0{user}\0{secret}".encode() for user in users)]
    forms = [secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
             urllib.parse.quote_plus(secret), urllib.parse.quote(secret)]
    for blob in blobs:
        standard = base64.b64encode(blob).decode()
        forms += [standard, standard.rstrip("="), base64.urlsafe_b64encode(blob).decode().rstrip("=")]
    return forms


def _decodings(run: str) -> list[bytes]:
    """What a base64 run decodes to, in the standard and the URL-safe alphabet, padding repaired."""
    body = run.rstrip("=")
    padded = body + "=" * (-len(body) % 4)
    found = []
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            found.append(decode(padded))
        except (binascii.Error, ValueError):
            pass
    return found
