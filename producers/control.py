"""Sends admin commands as control messages and waits for the control worker's answer."""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from deskmail.producers.publisher import Publisher
from deskmail.workers.constants import Queue
from deskmail.workers.control import sign
from deskmail.workers.secrets import SecretBox
from deskmail.workers.settings import split_secrets
from deskmail.workers.store import Store


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


Progress = Callable[[dict[str, Any]], None]
TEST_STEP_TIMEOUT = 120.0  # seconds one Test step may take on the worker (a server slow to answer DATA)


def send(publisher: Publisher, store: Store, message: dict[str, Any], timeout: float,
         on_progress: Progress | None = None, busy_timeout: float | None = None) -> dict[str, Any]:
    """Publish the message to deskmail.control and return the worker's answer (or why it refused it).

    The answer is pushed (LISTEN/NOTIFY, sent when the worker's transaction commits), not polled. A
    request still running reports its progress to `on_progress`; each progress restarts the
    timeout (`busy_timeout` once a worker says it runs the request on its host), so a long bulk action
    or a slow Test step never passes for one nobody answered. `publisher` must be
    connected to the control vhost (DESKMAIL_CONTROL_AMQP_URL) as an admin.
    """
    body = json.dumps({"queue_name": Queue.CONTROL, "actor_name": Queue.CONTROL, "args": [message], "kwargs": {},
                       "options": {}, "message_id": message["request_id"],
                       "message_timestamp": int(time.time() * 1000)}).encode("utf-8")
    rid = message["request_id"]
    with store.control_notices() as wait:  # listening before publishing: no answer can slip past
        store.record_control_sent(message)
        publisher.publish_raw(body, rid, 9, Queue.CONTROL)
        deadline, seen = time.monotonic() + timeout, None
        while True:
            answer = _answer(store, rid)
            if answer is not None and not answer.get("running"):
                return answer
            if answer is not None and answer != seen:
                busy = busy_timeout if busy_timeout and answer.get("host") else timeout
                seen, deadline = answer, time.monotonic() + busy
                if on_progress is not None:
                    on_progress(answer)
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(_silence(message, busy_timeout if seen and seen.get("host") and busy_timeout
                                        else timeout, seen))
            wait(rid, left)


def _answer(store: Store, request_id: str) -> dict[str, Any] | None:
    answer = store.control_answer(request_id)
    if answer:  # '{}' while the worker's first transaction has not committed
        return answer
    refusal = store.control_refusal(request_id)
    if refusal is not None:  # kept apart: a refusal never takes the request id
        return {"ok": False, "touched": 0, "refused": True, "error": refusal}
    return None


def _silence(message: dict[str, Any], timeout: float, seen: dict[str, Any] | None) -> str:
    rid = message["request_id"]
    if seen is not None and seen.get("host"):
        return (f"the worker on {seen['host']} stopped reporting the Test action's steps for {timeout:.0f} s "
                f"(request {rid}); see `deskmail audit` later for its result")
    if seen is not None and seen.get("queue"):
        return (f"no worker of {seen['queue']} ran the Test action within {timeout:.0f} s (is a worker consuming "
                f"{seen['queue']}?); request {rid} waits there and is not run after DESKMAIL_CONTROL_MAX_AGE")
    if seen is not None and seen.get("accepted"):
        return (f"the control worker stopped reporting progress for {timeout:.0f} s; request {rid} was accepted "
                f"and is {seen.get('done', 0)} of {seen.get('total', '?')} done: a control worker, or the scheduler "
                "after a minute without progress, finishes it (its result: `deskmail audit`)")
    if seen is not None:
        return (f"the control worker stopped reporting progress for {timeout:.0f} s; request {rid} is "
                f"{seen.get('done', 0)} of {seen.get('total', '?')} done (`deskmail control pending`)")
    return (f"no control worker answered within {timeout:.0f} s (is a worker consuming deskmail.control?); "
            f"request {rid} stays queued and expires unapplied after DESKMAIL_CONTROL_MAX_AGE; "
            f"`deskmail control cancel {rid}` makes sure it is never applied")


def run_test(publisher: Publisher, store: Store, key: str, timeout: float, project: str, to: str | None = None,
             fields: dict[str, Any] | None = None, on_progress: Progress | None = None,
             requested_by: str | None = None, attach: bool = False) -> dict[str, Any]:
    """The Test action through a worker of the project's transport queue: its final answer.

    `fields` (settings_fields) tests settings not saved yet. The answer's `steps` are those of
    workers.diagnosis (name, status, detail, advice), `host` says which worker ran them, `accepted`
    whether the test mail was accepted; `on_progress` sees the steps as they arrive. The command and
    the console both call this. `attach` adds a small text attachment to the test mail.
    """
    extra: dict[str, Any] = {"requested_by": requested_by} if requested_by else {}
    extra.update({"attach": True} if attach else {})
    message = control_message("settings.test", key, project=project, to=to,
                              **{k: v for k, v in (fields or {}).items() if k != "project"}, **extra)
    return send(publisher, store, message, timeout, on_progress, busy_timeout=max(timeout, TEST_STEP_TIMEOUT))
