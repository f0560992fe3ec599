"""Builds the RFC 5322 message of a mail: a hot path, so bytes are composed directly.

The stdlib `email` package costs several times the SMTP exchange itself; the message shapes
deskmail sends are few (text, html, or both as multipart/alternative), so they are written
out here, with the stdlib's encoders for the parts that need care (encoded words, QP).
"""

from __future__ import annotations

import binascii
import re
import secrets
import uuid
from datetime import datetime
from email.header import Header
from email.utils import format_datetime
from typing import Sequence

from deskmail.workers import mime_parts
from deskmail.workers.mime_parts import Sender  # noqa: F401 - part of this module's API
from deskmail.workers.attachments import Attachment

from deskmail.schemas.addresses import ascii_domain_form

MESSAGE_ID_DOMAIN = "deskmail"
_CRLF = "\r\n"
# RFC 5322 atext and the spaces between atoms: a display name of only these may be written bare; any other
# (a `.`, `,`, `"`, `@`, `(`, ...) must be a quoted-string, or a parser reads it as something else.
_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def message_id_for(event_id: uuid.UUID | str, domain: str) -> str:
    """The Message-ID derived from the event id, so a resend carries the same one."""
    return f"<{event_id}@{domain or MESSAGE_ID_DOMAIN}>"


def _is_ascii(text: str) -> bool:
    return text.isascii()


def _word(text: str) -> str:
    """Header text: plain when short ASCII without edge whitespace, else RFC 2047 encoded words, folded
    with CRLF (a receiver would drop leading or doubled spaces of plain text when unfolding)."""
    if _is_ascii(text) and len(text) < 900 and text == text.strip() and "  " not in text:
        return text
    return Header(text, "utf-8", maxlinelen=76).encode(linesep=_CRLF)


def _address(address: str, name: str | None) -> str:
    """`name <address>`, the name bare, quoted or encoded as RFC 5322 and 2047 need; the domain in punycode
    (a header holds UTF-8 only where a Unicode local part leaves no choice)."""
    address = ascii_domain_form(address)
    if not name:
        return address
    if _is_ascii(name) and _PHRASE.fullmatch(name):
        return f"{name} <{address}>"
    if _is_ascii(name):  # a quoted-string keeps every space and tab as it is; an encoded word may not
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{address}>'
    encoded = _encoded_name(name)
    return f"{encoded}{_CRLF if len(encoded) + len(address) > 900 else ''} <{address}>"


def _encoded_name(name: str) -> str:
    """A display name as one encoded word whenever it fits on a line.

    RFC 2047 wants encoded words of at most 75 characters, but a phrase split into several is read back
    differently by different decoders: RFC 2047 drops the space between two encoded words, Python's own
    parser keeps it. Every decoder reads one long encoded word the same, so only a name too long for one
    line (hundreds of non-ASCII characters) is split, as RFC 2047 says.
    """
    word = "=?utf-8?b?" + binascii.b2a_base64(name.encode("utf-8"), newline=False).decode("ascii") + "?="
    return word if len(word) <= 900 else Header(name, "utf-8", maxlinelen=76).encode(linesep=_CRLF)


def _addresses(items: list) -> str:
    parts = [_address(i["address"], i.get("name")) if isinstance(i, dict) else _address(i, None) for i in items]
    return ("," + _CRLF + " ").join(parts)


def _body(text: str, subtype: str) -> str:
    """A text part's headers and body: 7bit when it can be, quoted-printable otherwise."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    if _is_ascii(lines) and max(map(len, lines.split("\n")), default=0) <= 998:
        return (f"Content-Type: text/{subtype}; charset=\"us-ascii\"{_CRLF}"
                f"Content-Transfer-Encoding: 7bit{_CRLF}{_CRLF}" + lines.replace("\n", _CRLF))
    qp = binascii.b2a_qp(lines.encode("utf-8"), istext=True).decode("ascii").replace("\n", _CRLF)
    return (f"Content-Type: text/{subtype}; charset=\"utf-8\"{_CRLF}"
            f"Content-Transfer-Encoding: quoted-printable{_CRLF}{_CRLF}" + qp)


def _content(event: dict) -> str:
    text, html = event.get("text"), event.get("html")
    if text is not None and html is not None:
        plain, rich = _body(text, "plain"), _body(html, "html")
        boundary = _boundary(plain, rich)
        return (f"Content-Type: multipart/alternative; boundary=\"{boundary}\"{_CRLF}{_CRLF}"
                f"--{boundary}{_CRLF}{plain}{_CRLF}"
                f"--{boundary}{_CRLF}{rich}{_CRLF}--{boundary}--{_CRLF}")
    return _body(text, "plain") if text is not None else _body(event["html"], "html")  # the schema: one at least


def _boundary(*parts: str) -> str:
    """A boundary no part contains: random per message (a caller cannot aim at it), and checked all the same."""
    while True:
        boundary = "=_deskmail_" + secrets.token_hex(16)
        if not any(boundary in part for part in parts):
            return boundary


def build(event: dict, sender: Sender, message_id: str, date: datetime,
          attachments: Sequence[Attachment] = ()) -> bytes:
    """The whole message with CRLF line endings; UTF-8 only where addresses need SMTPUTF8."""
    sender = mime_parts.sender_for(event, sender)
    head = [f"From: {_address(sender.address, sender.name)}"]
    for header, field in (("To", "to"), ("Cc", "cc")):
        if event.get(field):
            head.append(f"{header}: {_addresses(event[field])}")
    reply_to = event.get("reply_to") or ([sender.reply_to] if sender.reply_to else [])
    if reply_to:
        head.append(f"Reply-To: {_addresses(reply_to)}")
    head += [f"Subject: {_word(event['subject'])}", f"Date: {format_datetime(date)}",
             f"Message-ID: {message_id}", "MIME-Version: 1.0",
             f"X-Deskmail-Event-Id: {event['event_id']}", f"X-Deskmail-Kind: {event['kind']}"]
    head += mime_parts.headers(event, sender)
    if event.get("record"):
        head.append(f"X-Deskmail-Record: {_word(event['record']['type'] + '/' + event['record']['id'])}")
    head += [f"{name}: {_word(value)}" for name, value in (event.get("headers") or {}).items()]
    body = mime_parts.content(event, attachments, _body) if attachments else _content(event)
    return (_CRLF.join(head) + _CRLF + body).encode("utf-8")
