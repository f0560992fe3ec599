"""Microsoft Graph sendMail with our own RFC 5322 message (base64 MIME), so our Message-ID is kept.

Graph takes the recipients of a MIME message from its To, Cc and Bcc headers; the message builder
writes no Bcc, so the envelope's other recipients are added as a Bcc header (Exchange strips it).
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import requests

from deskmail.schemas.addresses import ascii_domain_form
from deskmail.workers.attachments import Attachment
from deskmail.workers.transports import graph_replies, https, phase
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, TransportFailure, advised
from deskmail.workers.transports.https import PolicySession
from deskmail.workers.transports.https_failures import connection_failure

GRAPH_URL = "https://graph.microsoft.com"
MIME_LIMIT = 4_000_000  # bytes of a sendMail request body; Graph refuses requests over about 4 MB
UPLOAD_CHUNK = 10 * 320 * 1024  # Graph wants upload chunks in multiples of 320 KiB, each under 4 MB


@dataclass(frozen=True)
class Mailbox:
    """Where Graph sends from, and how to reach it."""

    graph_url: str
    sender: str
    ca_file: str | None = None
    timeout: float = 30.0
    final_reply_timeout: float = 600.0

    @property
    def send_url(self) -> str:
        """The sendMail URL of the sender's mailbox."""
        return f"{self.user_url}/sendMail"

    @property
    def messages_url(self) -> str:
        """The messages collection of the sender's mailbox (drafts are created there)."""
        return f"{self.user_url}/messages"

    @property
    def user_url(self) -> str:
        """The sender's mailbox in Graph."""
        return f"{self.graph_url.rstrip('/')}/v1.0/users/{urllib.parse.quote(self.sender, safe='@')}"


def with_bcc(envelope: Envelope, data: bytes | None = None) -> bytes:
    """The message (or `data`, the same message in another form) with a Bcc header naming the envelope
    recipients that To and Cc do not show."""
    data = envelope.data if data is None else data
    hidden = envelope.blind_copies()
    if not hidden:
        return data
    return ("Bcc: " + ",\r\n ".join(map(ascii_domain_form, hidden)) + "\r\n").encode("utf-8") + data


def send(session: requests.Session, mailbox: Mailbox, envelope: Envelope, token: Callable[[], str],
         drop: Callable[[], None]) -> Delivered:
    """POST the message to sendMail over session (a PolicySession trusting mailbox.ca_file); a refused token is
    dropped and a fresh one tried once. A message over Graph's request limit goes as a draft with its
    attachments uploaded apart (send_large)."""
    body = base64.b64encode(with_bcc(envelope))
    if len(body) > MIME_LIMIT and envelope.without_attachments is not None:
        return send_large(session, mailbox, envelope, token, drop)
    for attempt in (1, 2):
        bearer = token()
        phase.before_data()
        response = _post(session, mailbox, body, bearer)
        if response.status_code == 401 and attempt == 1:
            drop()
            continue
        return _outcome(response, mailbox, envelope)
    raise AssertionError("unreachable")


def send_large(session: requests.Session, mailbox: Mailbox, envelope: Envelope, token: Callable[[], str],
               drop: Callable[[], None]) -> Delivered:
    """A message over the request limit: a draft from the MIME without attachments (so Message-ID, In-Reply-To
    and References are ours), each attachment through an upload session, then send. A failure before the send
    deletes the draft; only a lost answer to the send itself is ambiguous."""
    assert envelope.without_attachments is not None
    draft = base64.b64encode(with_bcc(envelope, envelope.without_attachments()))
    created = _authorized(session, mailbox, envelope, "POST", mailbox.messages_url, token, drop, data=draft,
                          headers={"Content-Type": "text/plain"})
    message_url = f"{mailbox.messages_url}/{urllib.parse.quote(str(created.json()['id']), safe='')}"
    try:
        for attachment in envelope.attachments:
            _upload(session, mailbox, envelope, message_url, attachment, token, drop)
        sent = _authorized(session, mailbox, envelope, "POST", f"{message_url}/send", token, drop, sending=True)
    except TransportFailure as failure:
        if failure.outcome is not Outcome.AMBIGUOUS:  # not sent: a retry makes a new draft, this one goes
            _delete_quietly(session, mailbox, message_url, token)
        raise
    request_id = sent.headers.get("request-id", "")
    return Delivered(f"{sent.status_code} accepted by Microsoft Graph for {mailbox.sender} (draft with "
                     f"{len(envelope.attachments)} attachment(s) uploaded, {envelope.attachment_bytes} bytes)"
                     + (f" (request-id {request_id})" if request_id else ""))


def _upload(session: requests.Session, mailbox: Mailbox, envelope: Envelope, message_url: str,
            attachment: Attachment, token: Callable[[], str], drop: Callable[[], None]) -> None:
    """One attachment through an upload session, in chunks (the upload URL carries its own authorization)."""
    item = {"attachmentType": "file", "name": attachment.filename, "size": len(attachment.content),
            "contentType": attachment.content_type, "isInline": attachment.inline}
    if attachment.content_id:
        item["contentId"] = attachment.content_id
    opened = _authorized(session, mailbox, envelope, "POST", f"{message_url}/attachments/createUploadSession",
                         token, drop, json={"AttachmentItem": item})
    upload_url, total = str(opened.json()["uploadUrl"]), len(attachment.content)
    for start in range(0, total, UPLOAD_CHUNK):
        chunk = attachment.content[start:start + UPLOAD_CHUNK]
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}"}
        _checked(_call(session, mailbox, "PUT", upload_url, data=chunk, headers=headers), mailbox, envelope)


def _authorized(session: requests.Session, mailbox: Mailbox, envelope: Envelope, method: str, url: str,
                token: Callable[[], str], drop: Callable[[], None], *, sending: bool = False,
                data: bytes | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None) -> requests.Response:
    """A Graph request with the bearer token, once more with a fresh token after a 401; non-2xx raises."""
    for attempt in (1, 2):
        response = _call(session, mailbox, method, url, sending=sending, data=data, json=json,
                         headers={**(headers or {}), "Authorization": f"Bearer {token()}"})
        if response.status_code == 401 and attempt == 1:
            drop()
            continue
        return _checked(response, mailbox, envelope)
    raise AssertionError("unreachable")


def _checked(response: requests.Response, mailbox: Mailbox, envelope: Envelope) -> requests.Response:
    if not 200 <= response.status_code < 300:
        _outcome(response, mailbox, envelope)  # raises the classified failure
    return response


def _call(session: requests.Session, mailbox: Mailbox, method: str, url: str, *, sending: bool = False,
          data: bytes | None = None, json: Any = None, headers: Mapping[str, str] | None = None) -> requests.Response:
    """One request; a lost answer is ambiguous only for the request that sends."""
    try:
        return session.request(method, url, data=data, json=json, headers=headers, allow_redirects=False,
                               timeout=(mailbox.timeout, mailbox.final_reply_timeout))
    except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
        # PolicySession raises a refused connect as its TransportFailure: here a connection was tried, and what
        # matters is whether the request that sends went out whole, when Graph may have taken the message
        found = connection_failure(exc, *https.host_port(url), sends=sending,
                                   noun=f"Graph ({method} {urllib.parse.urlsplit(url).path})")
        if found is None:
            raise
        raise found.failure() from None


def _delete_quietly(session: requests.Session, mailbox: Mailbox, message_url: str, token: Callable[[], str]) -> None:
    """Delete a draft that will not be sent; a failure leaves it in Drafts, which does no harm."""
    try:
        session.delete(message_url, headers={"Authorization": f"Bearer {token()}"}, allow_redirects=False,
                       timeout=(mailbox.timeout, mailbox.timeout))
    except Exception:  # noqa: BLE001 - cleaning up must not hide the failure being reported
        pass


def _post(session: requests.Session, mailbox: Mailbox, body: bytes, token: str) -> requests.Response:
    """One sendMail request; errors classified by whether Graph may have taken the message."""
    return _call(session, mailbox, "POST", mailbox.send_url, sending=True, data=body,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})


def _outcome(response: requests.Response, mailbox: Mailbox, envelope: Envelope) -> Delivered:
    """Delivered for a 2xx, else the classified failure."""
    status = response.status_code
    request_id = response.headers.get("request-id", "")
    if 200 <= status < 300:
        return Delivered(f"{status} accepted by Microsoft Graph for {mailbox.sender}"
                         + (f" (request-id {request_id})" if request_id else ""))
    code, message = _error_of(response)
    words = f"{status} {code}: {message}"[:500]
    wait = https.retry_after(response.headers.get("Retry-After"))
    rule = graph_replies.rule_for(status, code, message)
    if rule.outcome is Outcome.QUOTA:
        raise advised(Outcome.QUOTA, f"Graph: the mailbox {mailbox.sender} is over its sending limit: {words}",
                      rule.advice, retry_after=wait)
    if rule.outcome is Outcome.TRANSIENT:
        raise advised(Outcome.TRANSIENT, f"Graph is busy or failing: {words}", rule.advice, retry_after=wait)
    if rule.outcome is Outcome.CONFIGURATION:
        send_as = "" if envelope.sender.lower() == mailbox.sender.lower() else \
            f"; and give {mailbox.sender} Send As rights on {envelope.sender}, the from address"
        problem = PROBLEMS.get(status, PROBLEMS[403]).format(sender=mailbox.sender, words=words)
        raise advised(Outcome.CONFIGURATION, problem, rule.advice.format(sender=mailbox.sender, send_as=send_as),
                      step=rule.step or None)
    raise advised(Outcome.PERMANENT, f"Graph refused the message: {words}", rule.advice)


PROBLEMS = {401: "Graph refused the access token: {words}", 404: "Graph has no mailbox {sender}: {words}",
            403: "Graph refused to send as {sender}: {words}"}


def _error_of(response: requests.Response) -> tuple[str, str]:
    """Graph's error code and message, from {"error": {"code", "message"}} or the raw text."""
    try:
        error = response.json().get("error") or {}
        return str(error.get("code", "")), " ".join(str(error.get("message", "")).split())
    except (ValueError, AttributeError):
        return response.reason or "", " ".join(response.text[:300].split())


class GraphClient:
    """Graph sends over one requests session per thread and trusted CA, so connections are reused."""

    def __init__(self, allow: Iterable = ()) -> None:
        self.allow = tuple(allow)
        self._local = threading.local()

    def send(self, mailbox: Mailbox, envelope: Envelope, token: Callable[[], str],
             drop: Callable[[], None]) -> Delivered:
        """Send over this thread's session for the mailbox's CA."""
        return send(self._session(mailbox.ca_file), mailbox, envelope, token, drop)

    def _session(self, ca_file: str | None) -> PolicySession:
        sessions = self._sessions()
        if ca_file not in sessions:  # a session's trust is fixed: projects with their own CA get their own
            sessions[ca_file] = PolicySession(self.allow, ca_file=ca_file)
        return sessions[ca_file]

    def _sessions(self) -> dict[str | None, PolicySession]:
        if not hasattr(self._local, "sessions"):
            self._local.sessions = {}
        return self._local.sessions

    def close(self) -> None:
        """Close this thread's sessions."""
        for session in self._sessions().values():
            session.close()
        self._sessions().clear()
