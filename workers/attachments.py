"""Attachments between admission and delivery: bytes out of the event into PostgreSQL, and back for the send.

At admission each attachment's base64 content is decoded and replaced in the event by a reference
(`sha256`, `size`); the bytes are stored once per hash (workers.store). So the ledger row's event, every
later broker message (they carry the event id only) and every log line stay small, whatever was attached.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from deskmail.workers.errors import DeskmailError

if TYPE_CHECKING:
    from deskmail.workers.store import Store

log = logging.getLogger(__name__)
GRACE_SECONDS = 3600.0  # a blob an admission used this recently is never deleted (see 0008_attachments.sql)


class MissingAttachment(DeskmailError):
    """An admitted mail refers to a blob that is no longer stored (cleaned up after its retention)."""


@dataclass(frozen=True)
class Attachment:
    """One attachment ready for the message: its bytes and how the mail shows it."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False

    @property
    def sha256(self) -> str:
        """Hex digest of the content."""
        return hashlib.sha256(self.content).hexdigest()


def is_inline(attachment: Mapping[str, Any]) -> bool:
    """Inline when it says so; a content id without `inline` means inline (an image the html shows)."""
    return bool(attachment.get("inline", attachment.get("content_id") is not None))


def extract(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The event with each attachment's content replaced by its sha256 and size, and the blobs {sha256: bytes}.

    The event must have passed validation (its contents are base64); the caller's event is not changed.
    """
    if not event.get("attachments"):
        return event, {}
    blobs: dict[str, bytes] = {}
    references = []
    for attachment in event["attachments"]:
        content = binascii.a2b_base64(attachment["content"], strict_mode=True)
        digest = hashlib.sha256(content).hexdigest()
        blobs[digest] = content
        reference = {key: value for key, value in attachment.items() if key != "content"}
        references.append({**reference, "inline": is_inline(attachment), "sha256": digest, "size": len(content)})
    return {**event, "attachments": references}, blobs


def attachments_of(event: Mapping[str, Any], contents: Mapping[str, bytes]) -> tuple[Attachment, ...]:
    """The admitted event's attachments with their bytes (MissingAttachment if a blob is gone)."""
    out = []
    for reference in event.get("attachments") or ():
        content = contents.get(reference["sha256"])
        if content is None:
            raise MissingAttachment(f"attachment {reference['filename']!r} is no longer stored (sha256 "
                                    f"{reference['sha256'][:12]}...); it was cleaned up after its retention")
        out.append(Attachment(reference["filename"], reference["content_type"], content,
                              reference.get("content_id"), bool(reference.get("inline"))))
    return tuple(out)


def clean_up(store: Store, retention: float, grace: float = GRACE_SECONDS, batch: int = 1000) -> int:
    """One scheduler step: delete blobs no mail needs any more, in batches; returns how many were deleted."""
    deleted = 0
    while (count := store.delete_unused_attachments(grace, retention, batch)) > 0:
        deleted += count
        if count < batch:
            break
    if deleted:
        log.info("deleted %s attachment blob(s) no mail needs any more", deleted)
    return deleted


def clean_up_step(store: Store, retention: float) -> Callable[[], dict[str, int]]:
    """The scheduler step (an entry of Scheduler.extras) that deletes attachment blobs no mail needs any more."""
    return lambda: {"attachments_deleted": clean_up(store, retention)}


def blobs_of(event: Mapping[str, Any], blobs: Mapping[str, bytes]) -> dict[str, bytes]:
    """The blobs an admitted event's attachments refer to, out of those of a whole batch."""
    return {a["sha256"]: blobs[a["sha256"]] for a in event.get("attachments") or () if a["sha256"] in blobs}
