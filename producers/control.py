"""Sends admin commands as control messages and waits for the control worker's answer."""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from producers.publisher import Publisher
from workers.constants import Queue
from workers.control import sign
from workers.secrets import SecretBox
from workers.settings import split_secrets
from workers.store import Store


class NoAnswer(Exception):
    """No control worker answered in time; the request stays queued until it expires."""


def control_message(action: str, key: str, **fields: Any) -> dict[str, Any]:
    """A control message v1, signed when a key is configured."""
    message = {"request_id": str(uuid.uuid4()), "action": action,
               "requested_by": f"{getpass.getuser()}@{socket.gethostname()}",
               "requested_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
               **{k: v for k, v in fields.items() if v is not None}}
    if key:
        message["signature"] = sign(message, key)
    return message


def settings_fields(box: SecretBox, project: str, document: dict[str, Any]) -> dict[str, Any]:
    """The fields of a settings.set action: the settings without secrets, and the secrets sealed.

    Sealed here, with DESKMAIL_SECRET_KEYS, so that secrets never cross the broker in clear.
    """
    public, secrets = split_secrets(document)
    sealed = box.seal(project, secrets).decode("ascii") if secrets else None
    return {"project": project, "settings": public, "sealed_secrets": sealed}


def send(publisher: Publisher, store: Store, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Publish the message to deskmail.control and return the worker's answer (or why it refused it).

    `publisher` must be connected to the control vhost (DESKMAIL_CONTROL_AMQP_URL) as an admin.
    """
    body = json.dumps({"queue_name": Queue.CONTROL, "actor_name": Queue.CONTROL, "args": [message], "kwargs": {},
                       "options": {}, "message_id": message["request_id"],
                       "message_timestamp": int(time.time() * 1000)}).encode("utf-8")
    publisher.publish_raw(body, message["request_id"], 9, Queue.CONTROL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = store.control_answer(message["request_id"])
        if answer is not None:
            return answer
        refusal = store.control_refusal(message["request_id"])
        if refusal is not None:  # kept apart: a refusal never takes the request id
            return {"ok": False, "touched": 0, "refused": True, "error": refusal}
        time.sleep(0.1)
    raise NoAnswer(f"no control worker answered within {timeout:.0f} s (is a worker consuming deskmail.control?); "
                   f"request {message['request_id']} stays queued and expires unapplied after "
                   "DESKMAIL_CONTROL_MAX_AGE")
