"""The control actor: admin commands that change what gets sent, applied once and audited.

A command travels as a control message (schemas/control-message.v1.json) on `deskmail.control`.
It is refused when malformed, unsigned or mis-signed (if DESKMAIL_CONTROL_KEY is set), or older
than DESKMAIL_CONTROL_MAX_AGE; each request id is applied once and its answer kept for the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import schemas
from workers.constants import State
from workers.store import MOVED, Store

log = logging.getLogger(__name__)
CONTROL_SCHEMA = "control-message.v1"
HandOn = Callable[[], int]


def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a control message's signature covers: sorted-key compact JSON without `signature`."""
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of the canonical message, hex."""
    return hmac.new(key.encode("utf-8"), canonical(message), hashlib.sha256).hexdigest()


class Controller:
    """Callable behind the `deskmail.control` actor."""

    def __init__(self, store: Store, key: str, max_age: float, hand_on: HandOn,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.store, self.key, self.max_age, self.hand_on, self.clock = store, key, max_age, hand_on, clock

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Apply one control message, or record why it was refused."""
        message = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], dict) else None
        if message is None:
            log.warning("control message refused: it must carry exactly one object")
            return
        refusal = self._refusal(message)
        if refusal:
            self._answer_refusal(message, refusal)
            return
        if self.store.control_answer(message["request_id"]) is not None:
            return  # applied before: a redelivery or a replay
        answer = self._apply(message)
        self.store.record_control(message, answer)
        if answer.get("touched") and message["action"] not in ("backlog.suspend", "ambiguous.close"):
            self.hand_on()

    def _refusal(self, message: dict[str, Any]) -> str | None:
        problems = schemas.validate(CONTROL_SCHEMA, message)
        if problems:
            return "; ".join(map(str, problems))
        if self.key and not hmac.compare_digest(str(message.get("signature", "")), sign(message, self.key)):
            return "signature: missing or wrong (DESKMAIL_CONTROL_KEY differs between the command and the worker?)"
        requested = datetime.fromisoformat(message["requested_at"].replace("Z", "+00:00"))
        if abs((self.clock() - requested).total_seconds()) > self.max_age:
            return f"requested_at: older than {self.max_age:.0f} s; the request expired and was not applied"
        return None

    def _answer_refusal(self, message: dict[str, Any], refusal: str) -> None:
        log.warning("control message refused: %s", refusal)
        try:
            request_id = str(uuid.UUID(str(message.get("request_id"))))
        except ValueError:
            return
        answer = {"ok": False, "error": refusal, "touched": 0}
        self.store.record_control({"request_id": request_id, "action": str(message.get("action", "?"))[:64],
                                   "requested_by": str(message.get("requested_by", "?"))[:200]}, answer)

    def _apply(self, message: dict[str, Any]) -> dict[str, Any]:
        action = message["action"]
        handler = getattr(self, "_" + action.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": f"action: {action} is not available in this version", "touched": 0}
        return handler(message)

    def _move(self, message: dict[str, Any], from_state: str, to_state: str) -> dict[str, Any]:
        ids = None if message.get("all") else message["ids"]
        detail = f"{message['action']} by {message['requested_by']}"
        outcomes = self.store.move(ids, message.get("project"), from_state, to_state, detail)
        done = sum(1 for v in outcomes.values() if v == MOVED[to_state])
        return {"ok": True, "touched": done, "outcomes": outcomes}

    def _backlog_resume(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.BACKLOG, State.QUEUED)

    def _backlog_suspend(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.BACKLOG, State.SUSPENDED)

    def _suspended_resume(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.SUSPENDED, State.QUEUED)

    def _failed_retry(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.FAILED, State.QUEUED)

    def _ambiguous_resend(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.AMBIGUOUS, State.QUEUED)

    def _ambiguous_close(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._move(message, State.AMBIGUOUS, State.SENT)

    def _limits_set(self, message: dict[str, Any]) -> dict[str, Any]:
        limits = {k: message[k] for k in ("per_day", "recipients_per_mail") if k in message}
        if message.get("global"):
            self.store.set_global_limits(**limits)
        elif not self.store.set_project_limits(message["project"], **limits):
            return {"ok": False, "error": f"project: unknown project {message['project']!r}", "touched": 0}
        resumed = self.store.auto_resume(self.clock(), None if message.get("global") else message["project"])
        return {"ok": True, "touched": sum(resumed.values()), "limits": limits, "auto_resumed": resumed}

    def _auto_resume_set(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self.store.set_auto_resume(message["project"], message["enabled"]):
            return {"ok": False, "error": f"project: unknown project {message['project']!r}", "touched": 0}
        resumed = self.store.auto_resume(self.clock(), message["project"]) if message["enabled"] else {}
        return {"ok": True, "touched": sum(resumed.values()), "auto_resume": message["enabled"],
                "auto_resumed": resumed}

    def _project_pause(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._set_pause(message["project"], "admin")

    def _project_unpause(self, message: dict[str, Any]) -> dict[str, Any]:
        return self._set_pause(message["project"], None)

    def _set_pause(self, project: str, reason: str | None) -> dict[str, Any]:
        if self.store.get_project(project) is None:
            return {"ok": False, "error": f"project: unknown project {project!r}", "touched": 0}
        return {"ok": True, "touched": 0, "changed": self.store.set_pause(project, reason)}

def declare_control_actor(broker, runtime, hand_on: HandOn) -> None:  # noqa: ANN001 - dramatiq, Runtime
    """Declare the `deskmail.control` actor on broker."""
    import dramatiq
    from workers.constants import Queue
    controller = Controller(runtime.store, runtime.config.control_key, runtime.config.control_max_age, hand_on)
    dramatiq.Actor(controller, broker=broker, actor_name=Queue.CONTROL, queue_name=Queue.CONTROL, priority=0,
                   options={"max_retries": 30, "min_backoff": 1_000, "max_backoff": 60_000})
