"""An actor takes messages only from its own queue: a control action put on deskmail.admit is refused.

Dramatiq dispatches by the envelope's `actor_name`, whatever queue the message arrived on, so
queue permissions alone could not keep publishers of events away from the control actor. The
broker (workers/broker.py) sets a message's `queue_name` to the queue it really came from; this
middleware compares it with the actor's queue.
"""

from __future__ import annotations

import logging
from typing import Callable

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage

log = logging.getLogger(__name__)
Refuse = Callable[[MessageProxy, str], None]


class QueueGuard(dramatiq.Middleware):
    """Refuses, records and acknowledges a message whose actor does not consume the queue it came from."""

    def __init__(self, refuse: Refuse) -> None:
        self.refuse = refuse

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Let the message through only when its actor's queue is the queue it arrived on."""
        try:
            actor = broker.get_actor(message.actor_name)
        except ActorNotFound:
            return  # Dramatiq dead-letters it; the dead-letter drain keeps it as rejected
        if actor.queue_name == message.queue_name:
            return
        reason = (f"actor_name: {str(message.actor_name)[:64]!r} takes messages only from queue "
                  f"{str(actor.queue_name)!r}, and this one came from {message.queue_name!r}; it was not run")
        log.warning("message %s refused: %s", message.message_id, reason)
        self.refuse(message, reason)  # a store failure raises here: Retries tries again, nothing is lost
        raise SkipMessage(reason)
