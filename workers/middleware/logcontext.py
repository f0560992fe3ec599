"""Binds the mail an actor call is about (event id, and project for admission) to the log context."""

from __future__ import annotations

import contextvars

import dramatiq
from dramatiq.broker import MessageProxy

from deskmail.workers import logcontext


def _about(message: MessageProxy) -> dict[str, object]:
    """What the message itself tells: a transport message carries the event id, an event its project too."""
    args = message.args
    if len(args) != 1:
        return {}
    if isinstance(args[0], str):
        return {"event_id": args[0]}
    if isinstance(args[0], dict) and isinstance(args[0].get("event_id"), str):
        project = args[0].get("project")
        return {"event_id": args[0]["event_id"], "project": project if isinstance(project, str) else None}
    return {}


class LogContext(dramatiq.Middleware):
    """A fresh log context around each actor call, so no line of one mail carries another's id."""

    def __init__(self) -> None:
        self._tokens: dict[str, contextvars.Token] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Start the call's context with what the message says."""
        self._tokens[message.message_id] = logcontext.start(**_about(message))

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: object = None, exception: BaseException | None = None) -> None:
        """Leave the call's context."""
        token = self._tokens.pop(message.message_id, None)
        if token is not None:
            logcontext.end(token)

    after_skip_message = after_process_message
