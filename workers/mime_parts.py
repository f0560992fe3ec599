"""The parts of a message beyond text and html: attachments, inline images, threading and auto-reply headers.

workers.message writes the common shapes; a mail with attachments is wrapped here as mail clients expect it:

    multipart/mixed                       (only when there are files to attach)
      multipart/alternative               (only when there are both text and html)
        text/plain
        multipart/related; type="text/html"   (only when there are inline images)
          text/html                       (shows the images as cid:CONTENT_ID)
          image/png; Content-ID: <...>; Content-Disposition: inline
      application/pdf; Content-Disposition: attachment; filename*=utf-8''...   (RFC 2231 for non-ASCII names)

Boundaries are random and start with "=_", which neither base64 nor quoted-printable text can contain.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import urllib.parse
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from deskmail.workers.attachments import Attachment


log = logging.getLogger(__name__)
_CRLF = "\r\n"
_ATTRIBUTE_CHARS = "!#$&+-.^_`|~"  # RFC 2231 attribute-char besides letters and digits (percent-quote the rest)
_CHUNK = 50                         # characters of a file name per header line (the line stays under 78)
MAX_LINE = 998
_AUTOMATIC = ["Auto-Submitted: auto-generated", "X-Auto-Response-Suppress: All"]  # RFC 3834; Exchange's own
Part = Callable[[str, str], str]    # workers.message's text part: (text, subtype) -> headers and body


@dataclass(frozen=True)
class Sender:
    """Who a project's mail comes from."""

    address: str
    name: str | None = None
    reply_to: str | None = None
    list_unsubscribe: str | None = None  # the project's URL template, for notifications (workers.mime_parts)
    list_unsubscribe_post: bool = True


def sender_for(event: dict, sender: Sender) -> Sender:
    """The project's sender, with the technician's display name for a record mail that gives one."""
    if event.get("kind") == "record" and event.get("from_name"):
        return replace(sender, name=event["from_name"])
    return sender


def thread_root(event: dict, domain: str) -> str | None:
    """A stable root Message-ID for the event's record (same project, record type and id: same root)."""
    record = event.get("record")
    if not record:
        return None
    key = "\x00".join((event["project"], record["type"], record["id"])).encode("utf-8")
    return f"<thread.{hashlib.sha256(key).hexdigest()[:32]}@{domain}>"


def threading(event: dict, domain: str) -> tuple[str | None, list[str]]:
    """(In-Reply-To, References): as the event gives them, else for a record mail its record's root."""
    in_reply_to, references = event.get("in_reply_to"), list(event.get("references") or ())
    if in_reply_to is None and not references and event.get("kind") == "record":
        root = thread_root(event, domain)
        return root, [root] if root else []
    if in_reply_to is None and references:
        in_reply_to = references[-1]
    if in_reply_to is not None and not references:
        references = [in_reply_to]
    return in_reply_to, references


def headers(event: dict, sender: Sender) -> list[str]:
    """Threading headers, and for notifications the RFC 3834 auto-reply headers and List-Unsubscribe."""
    if event.get("kind") == "notification" and "in_reply_to" not in event and "references" not in event:
        return _AUTOMATIC + _unsubscribe(event, sender) if sender.list_unsubscribe else _AUTOMATIC  # the hot path
    in_reply_to, references = threading(event, sender.address.rpartition("@")[2])
    lines = []
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append("References: " + (_CRLF + " ").join(references))
    if event.get("kind") == "notification":
        lines += _AUTOMATIC + _unsubscribe(event, sender)
    return lines


def _unsubscribe(event: dict, sender: Sender) -> list[str]:
    """RFC 8058 List-Unsubscribe from the project's URL template, or nothing."""
    template = sender.list_unsubscribe
    if not template:
        return []
    first = next((r["address"] if isinstance(r, dict) else r for r in event.get("to") or ()), "")
    values = {"project": event["project"], "event_id": str(event["event_id"]), "to": first}
    url = template
    for name, value in values.items():
        url = url.replace("{" + name + "}", urllib.parse.quote(value, safe="@"))
    line = f"List-Unsubscribe: <{url}>"
    if len(line) > MAX_LINE or not line.isascii():
        log.warning("mail %s: List-Unsubscribe left out (the URL is %s characters or not ASCII)",
                    event["event_id"], len(url))
        return []
    return [line] + (["List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
                     if sender.list_unsubscribe_post else [])


def content(event: dict, attachments: Sequence[Attachment], part: Part) -> str:
    """Content headers and body of a mail with attachments; `part` writes one text part."""
    text, html = event.get("text"), event.get("html")
    inline = [a for a in attachments if a.inline and a.content_id] if html is not None else []
    files = [a for a in attachments if a not in inline]
    html_part = part(html, "html") if html is not None else None
    if html_part is not None and inline:
        html_part = _multipart("related", [html_part, *map(_attachment, inline)], '; type="text/html"')
    if text is not None and html_part is not None:
        body = _multipart("alternative", [part(text, "plain"), html_part])
    elif html_part is not None:
        body = html_part
    else:
        body = part(event["text"], "plain")  # the schema requires text where there is no html
    return _multipart("mixed", [body, *map(_attachment, files)]) if files else body + _CRLF


def _multipart(subtype: str, parts: list[str], parameters: str = "") -> str:
    boundary = "=_dm_" + secrets.token_hex(12)
    inner = "".join(f"--{boundary}{_CRLF}{p}{_CRLF}" for p in parts)  # that CRLF belongs to the next delimiter
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"{parameters}{_CRLF}{_CRLF}' \
           f"{inner}--{boundary}--{_CRLF}"


def _attachment(attachment: Attachment) -> str:
    """One attachment part, base64 in lines of 76 characters."""
    disposition = "inline" if attachment.inline else "attachment"
    head = [f"Content-Type: {attachment.content_type};{_CRLF} {_parameter('name', attachment.filename)}",
            f"Content-Disposition: {disposition};{_CRLF} {_parameter('filename', attachment.filename)}"]
    if attachment.content_id:
        head.append(f"Content-ID: <{attachment.content_id}>")
    head.append("Content-Transfer-Encoding: base64")
    return _CRLF.join(head) + _CRLF + _CRLF + _base64_lines(attachment.content)


def _base64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "".join(encoded[i:i + 76] + _CRLF for i in range(0, len(encoded), 76))


def _parameter(name: str, value: str) -> str:
    """name="value" for printable ASCII, else RFC 2231 name*=utf-8''percent-encoded, continued when long."""
    if value.isascii() and value.isprintable() and len(value) <= 200:
        return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    # one token per character, so a continuation never splits a character's UTF-8 bytes (some clients decode
    # each piece alone)
    tokens = [char if char.isascii() and (char.isalnum() or char in _ATTRIBUTE_CHARS) else
              "".join(f"%{b:02X}" for b in char.encode("utf-8")) for char in value]
    chunks, current = [], ""
    for token in tokens:
        if len(current) + len(token) > _CHUNK:
            chunks.append(current)
            current = ""
        current += token
    chunks.append(current)
    if len(chunks) == 1:
        return f"{name}*=utf-8''{chunks[0]}"
    return (";" + _CRLF + " ").join(f"{name}*{i}*={'utf-8' + chr(39) * 2 if i == 0 else ''}{chunk}"
                                    for i, chunk in enumerate(chunks))
