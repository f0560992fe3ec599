"""deskmail's RabbitMQ broker: a message's `queue_name` is the queue it was consumed from.

Dramatiq takes `queue_name` from the message body, which whoever published it wrote; the
worker then acknowledges on that queue's consumer and re-enqueues delayed messages there. A
body claiming `deskmail.control.DQ` on `deskmail.admit.DQ` would be moved onto the control
queue by the worker itself. Here the claimed name is replaced by the real one on arrival, so
QueueGuard (workers/middleware/queue_guard.py) checks the truth.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.errors import DecodeError

log = logging.getLogger(__name__)


class _ArrivalConsumer(_RabbitmqConsumer):
    """Stamps every message with the queue it came from."""

    def __next__(self):  # noqa: ANN204 - Dramatiq's consumer protocol
        message = super().__next__()
        if message is not None and message.queue_name != self.queue_name:
            log.warning("message %s on queue %s claims queue %r; taken as from %s", message.message_id,
                        self.queue_name, str(message.queue_name)[:100], self.queue_name)
            message._message = message._message.copy(queue_name=self.queue_name)
        return message


class ArrivalRabbitmqBroker(RabbitmqBroker):
    """A RabbitmqBroker whose consumers report the queue a message really came from."""

    @property
    def consumer_class(self):  # noqa: ANN201 - Dramatiq's consumer class
        """Dramatiq's RabbitMQ consumer with the queue stamp."""
        return _ArrivalConsumer


class SafeJSONEncoder(dramatiq.JSONEncoder):
    """Dramatiq's JSON encoder whose decode fails as a DecodeError on any body it cannot read.

    Dramatiq dead-letters a body that raises DecodeError; one nested too deep for json (a
    RecursionError) or otherwise unreadable would instead escape the consumer and come back forever.
    From the dead-letter queue the scheduler keeps it as `rejected`.
    """

    def decode(self, data: bytes) -> dict:  # type: ignore[override]
        """The message dict of a body, or DecodeError."""
        try:
            return super().decode(data)
        except DecodeError:
            raise
        except (RecursionError, ValueError, TypeError) as exc:
            raise DecodeError(f"the message body cannot be decoded: {type(exc).__name__}", data, exc) from None
