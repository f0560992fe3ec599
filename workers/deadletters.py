"""Dead letters are not a store (RabbitMQ expires them): the scheduler moves them into the ledger.

Messages land in `deskmail.admit.XQ` when Dramatiq cannot decode them or an actor kept failing
(a long database outage). Decodable events are admitted again; anything else is kept as
`rejected` with its raw body, where admins can see it.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import pika

from workers.admit import Admitter

log = logging.getLogger(__name__)
ADMIT_DEAD_LETTERS = "deskmail.admit.XQ"


def _args_of(body: bytes) -> tuple[tuple, dict] | None:
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("args", []), list):
        return None
    return tuple(envelope.get("args", [])), envelope.get("kwargs") if isinstance(envelope.get("kwargs"), dict) else {}


def drain(amqp_url: str, admitter: Admitter, limit: int = 200) -> int:
    """Take up to `limit` dead letters of the admit queue into the ledger; returns how many."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(ADMIT_DEAD_LETTERS, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return _drain(channel, admitter, limit)
    finally:
        connection.close()


def _drain(channel, admitter: Admitter, limit: int) -> int:  # noqa: ANN001 - pika channel
    done = 0
    for _ in range(limit):
        method, _props, body = channel.basic_get(ADMIT_DEAD_LETTERS, auto_ack=False)
        if method is None:
            break
        parsed = _args_of(body)
        if parsed is None:
            admitter.reject_raw(body.decode("utf-8", "replace"),
                                "(message): the broker could not decode it as a deskmail event envelope")
        else:
            admitter(*parsed[0], **parsed[1])
        channel.basic_ack(method.delivery_tag)
        done += 1
    return done


def drain_step(amqp_url: str, admitter: Admitter) -> Callable[[], dict[str, int]]:
    """The scheduler's dead-letter step."""
    return lambda: {"dead_letters": drain(amqp_url, admitter)}
