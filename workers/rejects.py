"""Bad input kept within bounds: an id from its bytes, a capped excerpt and its size, capped problem lists.

A rejected message is kept where admins can see it, but never whole: a hostile publisher must
not be able to grow the ledger by megabytes per message, nor one error text by megabytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from deskmail.workers.store import Store

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

log = logging.getLogger(__name__)
REJECTED_NAMESPACE = uuid.UUID("5b0f8f0e-3c1e-4d55-9a43-0d6a1e6f2b70")
EXCERPT_BYTES = 8 * 1024
MAX_PROBLEMS = 20


def rejected_id(raw: bytes) -> uuid.UUID:
    """The ledger id of a message without a usable event id: derived from its bytes, stable on redelivery."""
    return uuid.uuid5(REJECTED_NAMESPACE, hashlib.sha256(raw).hexdigest())


def excerpt(raw: bytes, limit: int = EXCERPT_BYTES) -> str:
    """At most `limit` bytes of the message as text (a cut UTF-8 sequence is replaced, never raised on)."""
    text = raw[:limit].decode("utf-8", "replace").replace("\x00", "\\u0000")  # PostgreSQL text holds no NUL
    return text + (f" ... ({len(raw) - limit:,} more bytes)" if len(raw) > limit else "")


def capped(problems: Iterable[object], limit: int = MAX_PROBLEMS) -> str:
    """The first `limit` problems joined with "; ", and how many more there are."""
    shown: list[str] = []
    more = 0
    for problem in problems:
        if len(shown) < limit:
            shown.append(str(problem)[:300])
        else:
            more += 1
    return "; ".join(shown) + (f"; ... and {more:,} more problems" if more else "")


class RejectStore(Protocol):
    """What keeping rejected messages needs of the store (Store, or a fake with the same rules)."""

    def keep_rejected(self, event_id: uuid.UUID, reason: str, detail: str, excerpt: str, size: int,
                      project: str | None = None, kind: str | None = None) -> None: ...


class Rejects:
    """Keeps rejected messages in the ledger as `rejected`, bounded."""

    def __init__(self, store: RejectStore) -> None:
        self.store = store

    def keep(self, event_id: uuid.UUID | None, raw: bytes, reason: str, detail: str,
             project: object = None, kind: object = None) -> uuid.UUID:
        """Record one rejected message (once per id); returns its ledger id."""
        ledger_id = event_id or rejected_id(raw)
        detail = detail.replace("\x00", "\\u0000")  # PostgreSQL text holds no NUL
        self.store.keep_rejected(ledger_id, reason, detail, excerpt(raw), len(raw),
                                 project if isinstance(project, str) else None,
                                 kind if isinstance(kind, str) else None)
        log.warning("message %s rejected (%s): %s", ledger_id, reason, detail[:500].encode("unicode_escape").decode())
        return ledger_id


def claimed_fields(message: object) -> dict[str, object]:
    """The audit-relevant fields a control message claims, cut to size; nothing else of it is kept."""
    body = message if isinstance(message, dict) else {}
    out: dict[str, object] = {"action": str(body.get("action", "?"))[:64],
                              "requested_by": str(body.get("requested_by", "?"))[:200]}
    try:
        out["request_id"] = str(uuid.UUID(str(body.get("request_id"))))
    except ValueError:
        pass
    if isinstance(body.get("project"), str):
        out["project"] = body["project"][:64]
    return out


def refuse_misaddressed(store: Store, control_actor: str) -> Callable[[MessageProxy, str], None]:
    """QueueGuard's refusal: a rejected ledger entry, and an audit entry when it was a control action."""
    def refuse(message: MessageProxy, reason: str) -> None:
        envelope = {k: v for k, v in message.asdict().items() if k != "options"}
        raw = json.dumps(envelope, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")
        first = message.args[0] if len(message.args) == 1 and isinstance(message.args[0], dict) else {}
        with store.atomic() as tx:
            Rejects(tx).keep(None, raw, "misaddressed", reason, first.get("project"), first.get("kind"))
            if message.actor_name == control_actor:
                tx.record_control_refusal(claimed_fields(first), reason)
    return refuse
