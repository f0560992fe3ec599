"""Checks of the event fields added in version 1.1: attachments, threading and the agent's name.

The schema already bounds their shape; here is what it cannot say: header text (file names and the
From name end up in headers), base64 that really is base64, a content id used once, and the size caps,
which are the operator's (DESKMAIL_* settings) and so are checked apart from the contract.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from deskmail.schemas.header_text import header_text_problems
from deskmail.schemas.problems import Problem

MB = 1024 * 1024
BASE64_ALPHABET = (string.ascii_letters + string.digits + "+/").encode("ascii")
_PATH_SEPARATOR = re.compile(r"[/\\]")


@dataclass(frozen=True)
class AttachmentCaps:
    """How large attachments may be, decoded: each one, all of one event together, and how many."""

    per_attachment: int = 25 * MB
    per_event: int = 25 * MB
    count: int = 20


def decoded_size(content: str) -> int:
    """The number of bytes a valid, padded base64 text decodes to, without decoding it."""
    padding = len(content) - len(content.rstrip("=")) if content.endswith("===") else \
        2 if content.endswith("==") else 1 if content.endswith("=") else 0  # no copy of a valid text
    return len(content) * 3 // 4 - padding


def is_base64(content: str) -> bool:
    """RFC 4648 base64 with padding and nothing else, i.e. `[A-Za-z0-9+/]*={0,2}` in a multiple of 4 characters.

    Deleting the alphabet from the bytes leaves at most the padding: C loops, a few times quicker than that
    pattern on an attachment's megabytes.
    """
    if len(content) % 4 or not content.isascii():
        return False
    rest = content.encode("ascii").translate(None, BASE64_ALPHABET)
    return rest in (b"", b"=", b"==") and content.endswith(rest.decode("ascii"))


def mail_part_problems(event: dict[str, Any]) -> list[Problem]:
    """Problems of from_name and of each attachment's file name, content and content id."""
    problems = header_text_problems("from_name", event.get("from_name"))
    if event.get("from_name") is not None and event.get("kind") != "record":
        problems.append(Problem("from_name", "is for record mails only (kind: record); notifications are sent "
                                             "with the project's from name"))
    attachments = event.get("attachments")
    seen: set[str] = set()
    for index, attachment in enumerate(attachments if isinstance(attachments, list) else ()):
        if isinstance(attachment, dict):
            problems += _attachment_problems(f"attachments[{index}]", attachment, seen)
    return problems


def _attachment_problems(path: str, attachment: dict[str, Any], seen: set[str]) -> list[Problem]:
    name, content, content_id = attachment.get("filename"), attachment.get("content"), attachment.get("content_id")
    problems = header_text_problems(f"{path}.filename", name)
    if isinstance(name, str) and _PATH_SEPARATOR.search(name):
        problems.append(Problem(f"{path}.filename", "must be a file name without / or \\"))
    if isinstance(content, str) and not is_base64(content):
        problems.append(Problem(f"{path}.content", f"of {_shown(name)} is not base64 (RFC 4648 alphabet, padded "
                                                   "to a multiple of 4 characters, no line breaks)"))
    if isinstance(content_id, str):
        if content_id.lower() in seen:
            problems.append(Problem(f"{path}.content_id", "repeats the content id of another attachment"))
        seen.add(content_id.lower())
    return problems


def size_problems(event: dict[str, Any], caps: AttachmentCaps) -> list[Problem]:
    """The caps an event's attachments break, each naming the attachment (checked by publisher and admission)."""
    attachments = [a for a in event.get("attachments") or () if isinstance(a, dict)]
    problems = []
    if len(attachments) > caps.count:
        problems.append(Problem("attachments", f"has {len(attachments)} attachments, more than the {caps.count} "
                                               "allowed (DESKMAIL_ATTACHMENTS_MAX_COUNT)"))
    total = 0
    for index, attachment in enumerate(attachments):
        size = decoded_size(attachment.get("content") or "") if isinstance(attachment.get("content"), str) else 0
        total += size
        if size > caps.per_attachment:
            problems.append(Problem(f"attachments[{index}]", f"{_shown(attachment.get('filename'))} is {size} bytes, "
                                    f"over the {caps.per_attachment} bytes allowed per attachment "
                                    "(DESKMAIL_ATTACHMENT_MAX_BYTES)"))
    if total > caps.per_event:
        names = ", ".join(_shown(a.get("filename")) for a in attachments[:5])
        names += ", ..." if len(attachments) > 5 else ""
        problems.append(Problem("attachments", f"{names} are {total} bytes together, over the {caps.per_event} "
                                               "bytes allowed per mail (DESKMAIL_ATTACHMENTS_MAX_BYTES)"))
    return problems


def _shown(name: object) -> str:
    """A file name quoted for a message, shortened and with control characters escaped."""
    if not isinstance(name, str):
        return "(unnamed)"
    short = name if len(name) <= 80 else name[:80] + "..."
    return repr(short) if short.isprintable() else ascii(short)
