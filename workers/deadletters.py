"""Dead letters are not a store (RabbitMQ expires them): the scheduler moves them into the ledger.

Messages land in `deskmail.admit.XQ` when Dramatiq cannot decode them (an extra envelope key),
has no actor for them, or an actor kept failing (a long database outage). Only an envelope
exactly as Dramatiq and the publisher write it, for the admit actor, is admitted again; any
other is kept as `rejected` with the reason and never sent. Each dead letter is handled on its
own: one that cannot be handled is moved to `deskmail.parked` (no expiry), and the drain goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import dramatiq
import pika
import pika.exceptions
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage

from deskmail.workers.admit import Admitter
from deskmail.workers.constants import Queue
from deskmail.workers.errors import StoreError

log = logging.getLogger(__name__)
ADMIT_DEAD_LETTERS = "deskmail.admit.XQ"
PARKED = "deskmail.parked"
ENVELOPE_KEYS = frozenset({"queue_name", "actor_name", "args", "kwargs", "options", "message_id",
                           "message_timestamp"})
# Options Dramatiq's own middleware or deskmail set, and the types they must have.
OPTIONS: dict[str, tuple[type, ...]] = {
    "broker_priority": (int,), "retries": (int,), "max_retries": (int,), "min_backoff": (int,),
    "max_backoff": (int,), "time_limit": (int,), "eta": (int, float), "traceback": (str,),
}


def envelope_refusal(envelope: Any) -> str | None:
    """Why Dramatiq would not run this envelope on the admit actor, or None when it is one to admit again."""
    if not isinstance(envelope, dict):
        return "(message): the body is not a JSON object (a Dramatiq envelope)"
    extra, missing = sorted(set(envelope) - ENVELOPE_KEYS), sorted(ENVELOPE_KEYS - set(envelope) - {"options"})
    if extra:
        return f"(envelope): unknown key(s) {', '.join(repr(k[:40]) for k in extra[:10])}; Dramatiq refuses it"
    if missing:
        return f"(envelope): missing key(s) {', '.join(missing)}"
    if envelope["actor_name"] != Queue.ADMIT:
        return f"actor_name: {str(envelope['actor_name'])[:64]!r} is not {Queue.ADMIT!r}; no such actor here"
    if not isinstance(envelope["queue_name"], str) or q_name(envelope["queue_name"]) != Queue.ADMIT:
        return f"queue_name: {str(envelope['queue_name'])[:64]!r} is not {Queue.ADMIT!r}"
    if not isinstance(envelope["args"], list) or not isinstance(envelope["kwargs"], dict):
        return "(envelope): args must be a list and kwargs an object"
    if not isinstance(envelope["message_id"], str) or not _is_int(envelope["message_timestamp"]):
        return "(envelope): message_id must be a string and message_timestamp an integer"
    options = envelope.get("options", {})
    if not isinstance(options, dict):
        return "options: must be an object"
    for name, value in options.items():
        if name not in OPTIONS:
            return f"options: unknown option {str(name)[:40]!r}"
        if not isinstance(value, OPTIONS[name]) or isinstance(value, bool):
            return f"options.{name}: has the wrong type ({type(value).__name__})"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def drain(amqp_url: str, admitter: Admitter, limit: int = 200) -> int:
    """Take up to `limit` dead letters of the admit queue into the ledger; returns how many."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(ADMIT_DEAD_LETTERS, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        channel.queue_declare(PARKED, durable=True)
        channel.confirm_delivery()
        return _drain(channel, admitter, limit)
    finally:
        if connection.is_open:
            connection.close()


def _drain(channel, admitter: Admitter, limit: int) -> int:  # noqa: ANN001 - pika channel
    done = 0
    for _ in range(limit):
        method, properties, body = channel.basic_get(ADMIT_DEAD_LETTERS, auto_ack=False)
        if method is None:
            break
        try:
            take(admitter, body)
        except StoreError:
            if not admitter.store.reachable():
                channel.basic_nack(method.delivery_tag, requeue=True)  # PostgreSQL is away: next pass
                raise
            park(channel, method, properties, body, "the database refused what it holds")
        except Exception as exc:  # noqa: BLE001 - one bad dead letter must not stop the others
            park(channel, method, properties, body, type(exc).__name__)
        channel.basic_ack(method.delivery_tag)
        done += 1
    return done


def park(channel, method, properties, body: bytes, why: str) -> None:  # noqa: ANN001 - pika objects
    """Move a dead letter that cannot be handled to the parking queue (confirmed), where it never expires."""
    log.exception("dead letter %s (%d bytes) cannot be handled (%s); moved to %s for an operator",
                  properties.message_id, len(body), why, PARKED)
    channel.basic_publish("", PARKED, body, properties, mandatory=True)


def take(admitter: Admitter, body: bytes) -> None:
    """One dead letter into the ledger: admitted again if it is a clean admit envelope, else rejected."""
    try:
        envelope = dramatiq.get_encoder().decode(body)
    except Exception:  # noqa: BLE001 - any undecodable body is kept as rejected
        admitter.reject_raw(body, "undecodable", "(message): not UTF-8 JSON; the broker could not decode it "
                            "as a deskmail event envelope")
        return
    refusal = envelope_refusal(envelope)
    if refusal:
        admitter.reject_raw(body, "invalid_envelope", refusal)
        return
    message: dramatiq.Message[Any] = dramatiq.Message(**{"options": {}, **envelope})
    current = CurrentMessage()  # so a rejected event is keyed by this message's id, as on a worker
    current.before_process_message(None, message)
    try:
        admitter(*message.args, **message.kwargs)
    finally:
        current.after_process_message(None, message)


def drain_step(amqp_url: str, admitter: Admitter) -> Callable[[], dict[str, int]]:
    """The scheduler's dead-letter step."""
    return lambda: {"dead_letters": drain(amqp_url, admitter)}
