"""Publishes notification events to RabbitMQ: validated, persistent, confirmed, with timeouts."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

import kombu
import kombu.exceptions

import schemas
from workers.constants import Kind, Queue
from workers.errors import BrokerError

EVENT_SCHEMA = "notification-event.v1"


class InvalidEvent(schemas.InvalidPayload):
    """The event breaks the contract; nothing was published."""


def envelope(event: dict[str, Any], queue: str = Queue.ADMIT) -> bytes:
    """The Dramatiq message body carrying an event, as any publisher must write it."""
    return json.dumps({
        "queue_name": queue, "actor_name": queue, "args": [event], "kwargs": {}, "options": {},
        "message_id": event["event_id"], "message_timestamp": int(time.time() * 1000),
    }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def complete(event: dict[str, Any]) -> dict[str, Any]:
    """The event with an event_id and created_at, generated when absent."""
    out = dict(event)
    out.setdefault("event_id", str(uuid.uuid4()))
    out.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    return out


class Publisher:
    """Thread-safe event publisher over a kombu connection pool with publisher confirms."""

    def __init__(self, amqp_url: str, timeout: float = 10.0, pool_size: int = 4) -> None:
        self.timeout = timeout
        self._connection = kombu.Connection(amqp_url, connect_timeout=timeout,
                                            transport_options={"confirm_publish": True})
        self._pool = self._connection.Pool(limit=pool_size)
        self._returned = threading.local()

    def publish(self, event: dict[str, Any]) -> str:
        """Validate and publish one event; return its event id once the broker has confirmed it."""
        event = complete(event)
        problems = schemas.validate(EVENT_SCHEMA, event)
        if problems:
            raise InvalidEvent(tuple(problems))
        self._send(envelope(event), event["event_id"], Kind(event["kind"]).priority, Queue.ADMIT)
        return event["event_id"]

    def publish_raw(self, body: bytes, message_id: str, priority: int, queue: str) -> None:
        """Publish a prebuilt Dramatiq envelope (used for control messages)."""
        self._send(body, message_id, priority, queue)

    def _send(self, body: bytes, message_id: str, priority: int, queue: str) -> None:
        self._returned.value = None
        try:
            with self._pool.acquire(block=True, timeout=self.timeout) as conn:
                producer = conn.Producer(on_return=self._on_return)
                producer.publish(body, exchange="", routing_key=queue, delivery_mode=2, mandatory=True,
                                 priority=priority, content_type="application/json", content_encoding="utf-8",
                                 message_id=message_id, timeout=self.timeout, confirm_timeout=self.timeout,
                                 retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                           "interval_step": 0.5})
        except (kombu.exceptions.KombuError, OSError, TimeoutError) as exc:
            raise BrokerError(f"RabbitMQ did not confirm the message ({type(exc).__name__}: {exc}); "
                              "it may or may not have been queued, publishing it again is safe") from exc
        if self._returned.value:
            raise BrokerError(f"RabbitMQ could not route the message to queue {queue!r} "
                              f"({self._returned.value}); start a worker or run `deskmail broker declare`")

    def _on_return(self, exception: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.value = str(exception) or "returned"

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.force_close_all()
        self._connection.release()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_lines(publisher: Publisher, lines: Iterable[str]) -> Iterable[tuple[int, str | None, str | None]]:
    """(line number, event id, error) for each non-blank JSON line; bad lines do not stop the good ones."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"(line): not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(event, dict):
            yield number, None, "(root): an event must be a JSON object"
            continue
        try:
            yield number, publisher.publish(event), None
        except InvalidEvent as exc:
            yield number, None, str(exc)
