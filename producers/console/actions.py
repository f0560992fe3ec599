"""The console's one way to change anything: the control actions the `deskmail` command sends.

Each change becomes a control message with `requested_by` set to the logged-in user, so the audit
shows who did it. An action the control worker of this version does not know yet is not sent; the
page says plainly that it is not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deskmail import schemas
from deskmail.producers import control
from deskmail.producers.publisher import Publisher
from deskmail.workers.config import Config
from deskmail.workers.control import CONTROL_SCHEMA, applies
from deskmail.workers.store import Store

BATCH = 1000  # ids per control message of a bulk action (the schema allows 10,000)


@dataclass(frozen=True)
class Answer:
    """What became of one console action."""

    ok: bool
    text: str
    touched: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    available: bool = True


def available(action: str) -> bool:
    """True when the control worker applies `action` (its Controller has a handler and the schema allows it)."""
    enum = schemas.load_schema(CONTROL_SCHEMA)["properties"]["action"]["enum"]
    return action in enum and applies(action)


class Actions:
    """Sends control messages on behalf of a console user and waits for the answers."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config, self.store = config, store
        self._publisher: Publisher | None = None

    @property
    def publisher(self) -> Publisher:
        """A publisher on the control vhost (DESKMAIL_CONTROL_AMQP_URL, else DESKMAIL_AMQP_URL), opened on first use."""
        if self._publisher is None:
            self._publisher = Publisher(self.config.control_url, self.config.publish_timeout)
        return self._publisher

    def close(self) -> None:
        """Close the broker connection."""
        if self._publisher is not None:
            self._publisher.close()

    def send(self, user: str, action: str, **fields: Any) -> Answer:
        """Send one control action as `user` and return the worker's answer, or why there is none."""
        if not available(action):
            return Answer(False, f"{action} is not available yet: this version's control worker has no such "
                                 "action, so the console cannot do it (nothing was changed).", available=False)
        message = control.control_message(action, self.config.control_key, **fields)
        message["requested_by"] = f"console:{user}"
        if self.config.control_key:
            message["signature"] = control.sign(message, self.config.control_key)
        try:
            answer = control.send(self.publisher, self.store, message, self.config.control_timeout)
        except control.NoAnswer as exc:
            accepted = self.store.control_answer(message["request_id"]) or {}
            if accepted.get("accepted"):  # committed to finish: a control worker or the scheduler goes on with it
                return Answer(True, f"accepted, still under way ({exc})", int(accepted.get("touched", 0)),
                              accepted.get("outcomes") or {})
            return Answer(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - the broker is down: the page says so instead of a 500
            self._reset()
            return Answer(False, f"the control message could not be published: {exc}")
        if not answer.get("ok"):
            return Answer(False, f"refused: {answer.get('error')}", 0, answer.get("outcomes") or {})
        return Answer(True, f"done: {answer.get('touched', 0)} mail(s)", int(answer.get("touched", 0)),
                      answer.get("outcomes") or {})

    def _reset(self) -> None:
        try:
            self.close()
        finally:
            self._publisher = None
