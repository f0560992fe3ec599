"""Publishes notification events to RabbitMQ: validated, persistent, confirmed, with timeouts."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import amqp
import amqp.exceptions
import kombu
import kombu.exceptions

from deskmail import schemas
from deskmail.schemas.mail_parts import AttachmentCaps, size_problems
from deskmail.workers.config import Config
from deskmail.workers.constants import Kind, Queue
from deskmail.workers.errors import BrokerError

EVENT_SCHEMA = schemas.EVENT
BATCH_SIZE = 100  # events per broker message when publishing many: one hop and one ack for all of them


class InvalidEvent(schemas.InvalidPayload):
    """The event breaks the contract; nothing was published."""


def envelope(event: dict[str, Any] | list[dict[str, Any]], queue: str = Queue.ADMIT,
             message_id: str | None = None, actor: str | None = None) -> bytes:
    """The Dramatiq message body carrying an event (or a batch of them), as any publisher must write it."""
    return json.dumps({
        "queue_name": queue, "actor_name": actor or queue, "args": [event], "kwargs": {}, "options": {},
        "message_id": message_id or event["event_id"], "message_timestamp": int(time.time() * 1000),  # type: ignore
    }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def complete(event: dict[str, Any]) -> dict[str, Any]:
    """The event with an event_id and created_at, generated when absent."""
    out = dict(event)
    out.setdefault("event_id", str(uuid.uuid4()))
    out.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    return out


@dataclass(frozen=True)
class Prepared:
    """A validated event, ready to publish."""

    event_id: str
    event: dict[str, Any]
    priority: int


@dataclass(frozen=True)
class Batch:
    """One broker message carrying several events of one kind."""

    message_id: str
    body: bytes
    priority: int
    event_ids: tuple[str, ...]


def prepare(event: dict[str, Any], caps: AttachmentCaps | None = None) -> Prepared:
    """Complete and validate an event (InvalidEvent when it breaks the contract or its attachments pass the
    caps, by default those of the DESKMAIL_* settings in the environment)."""
    if not isinstance(event, dict):
        raise InvalidEvent((schemas.Problem("(root)", "an event must be a JSON object"),))
    event = complete(event)
    problems = schemas.validate(EVENT_SCHEMA, event)
    if not problems and event.get("attachments"):
        problems = size_problems(event, caps or Config.from_env().attachment_caps())
    if problems:
        raise InvalidEvent(tuple(problems))
    return Prepared(event["event_id"], event, Kind(event["kind"]).priority)


def batches(items: list[Prepared], size: int = BATCH_SIZE) -> list[Batch]:
    """Prepared events as broker messages of at most `size` events each, one kind per message, records first."""
    out: list[Batch] = []
    for priority in sorted({item.priority for item in items}, reverse=True):
        same = [item for item in items if item.priority == priority and not item.event.get("attachments")]
        actor = Queue.ADMIT.record_actor if priority >= Kind.RECORD.priority else Queue.ADMIT
        # an event with attachments goes alone: a batch of them could pass the broker's message size limit
        chunks = [same[start:start + size] for start in range(0, len(same), size)]
        chunks += [[item] for item in items if item.priority == priority and item.event.get("attachments")]
        for chunk in chunks:
            message_id = str(uuid.uuid4())
            out.append(Batch(message_id, envelope([i.event for i in chunk], message_id=message_id, actor=actor),
                             priority, tuple(i.event_id for i in chunk)))
    return out


class Publisher:
    """Thread-safe event publisher over a kombu connection pool with publisher confirms."""

    def __init__(self, amqp_url: str, timeout: float = 10.0, pool_size: int = 4,
                 caps: AttachmentCaps | None = None) -> None:
        self.timeout = timeout
        self.caps = caps  # attachment caps; None: those of the environment's DESKMAIL_* settings
        self._connection = kombu.Connection(amqp_url, connect_timeout=timeout,
                                            transport_options={"confirm_publish": True})
        self._pool = self._connection.Pool(limit=pool_size)
        self._returned = threading.local()

    def publish(self, event: dict[str, Any]) -> str:
        """Validate and publish one event; return its event id once the broker has confirmed it."""
        item = prepare(event, self.caps)
        actor = Queue.ADMIT.record_actor if item.priority >= Kind.RECORD.priority else Queue.ADMIT
        self._send(envelope(item.event, actor=actor), item.event_id, item.priority, Queue.ADMIT)
        return item.event_id

    def publish_many(self, events: Iterable[dict[str, Any]], window: int = 1000) -> list[str]:
        """Validate every event, then publish them all with pipelined confirms; return their event ids.

        Nothing is published when an event is invalid (InvalidEvent names it by index).
        """
        batch = []
        for index, event in enumerate(events):
            try:
                batch.append(prepare(event, self.caps))
            except InvalidEvent as exc:
                raise InvalidEvent(tuple(
                    schemas.Problem(f"events[{index}]" + ("" if p.path == "(root)" else f".{p.path}"), p.message)
                    for p in exc.problems)) from None
        self.publish_prepared(batch, window)
        return [item.event_id for item in batch]

    def publish_prepared(self, items: list["Prepared"], window: int = 100) -> None:
        """Publish prepared events in batch messages, with at most `window` confirms outstanding.

        A BrokerError lists in `event_ids` the events RabbitMQ did not confirm or returned;
        the others are queued.
        """
        if items:
            self._send_pipelined(batches(items), Queue.ADMIT, window)

    def _send_pipelined(self, batch: list[Batch], queue: str, window: int) -> None:
        # A connection of its own without kombu's per-message confirm wait; confirms are counted here.
        confirms = _Confirms()
        try:
            with self._connection.clone(transport_options={}) as conn:
                channel = conn.connection.channel()
                confirms.listen(channel)
                channel.confirm_select()
                for item in batch:
                    channel.basic_publish(amqp.Message(
                        item.body, delivery_mode=2, priority=item.priority, content_type="application/json",
                        content_encoding="utf-8", message_id=item.message_id), exchange="", routing_key=queue,
                        mandatory=True)
                    confirms.sent(item.message_id)
                    while confirms.waiting() >= window:
                        conn.connection.drain_events(timeout=self.timeout)
                while confirms.waiting():
                    conn.connection.drain_events(timeout=self.timeout)
                channel.close()
        except (kombu.exceptions.KombuError, amqp.exceptions.AMQPError, OSError, TimeoutError) as exc:
            missing = confirms.unconfirmed(batch)
            raise BrokerError(f"RabbitMQ did not confirm {len(missing)} of {sum(len(b.event_ids) for b in batch)} "
                              f"events ({type(exc).__name__}: {exc}); publishing them again is safe",
                              missing) from exc
        if confirms.failed:
            failed = [e for b in batch if b.message_id in confirms.failed for e in b.event_ids]
            raise BrokerError(f"RabbitMQ did not take {len(failed)} of {sum(len(b.event_ids) for b in batch)} "
                              f"events ({next(iter(confirms.failed.values()))}); publishing them again is safe",
                              failed)

    def publish_raw(self, body: bytes, message_id: str, priority: int, queue: str) -> None:
        """Publish a prebuilt Dramatiq envelope (used for control messages)."""
        self._send(body, message_id, priority, queue)

    def _send(self, body: bytes, message_id: str, priority: int, queue: str) -> None:
        self._returned.value = None
        # One deadline for the whole publish: pool, connection, reconnections and the confirm share
        # `timeout`, so a stalled broker makes publish raise after it, not after each step's own.
        deadline = time.monotonic() + self.timeout
        left = lambda: max(0.05, deadline - time.monotonic())  # noqa: E731

        def publish_once(producer: kombu.Producer) -> None:
            producer.publish(body, exchange="", routing_key=queue, delivery_mode=2, mandatory=True,
                             priority=priority, content_type="application/json", content_encoding="utf-8",
                             message_id=message_id, timeout=left(), confirm_timeout=left())

        try:
            with self._pool.acquire(block=True, timeout=self.timeout) as conn:
                def before_reconnect(exc: Exception, interval: float) -> None:
                    # kombu calls this before each new connection attempt
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"no confirm within {self.timeout:g} s") from exc
                    conn.connect_timeout = left()

                conn.connect_timeout = left()
                producer = conn.Producer(on_return=self._on_return)
                conn.ensure(producer, publish_once, errback=before_reconnect, max_retries=2,
                            interval_start=0.2, interval_step=0.5, interval_max=1)(producer)
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


class _Confirms:
    """Publisher confirms of one channel, by delivery tag (1, 2, ... in publishing order)."""

    def __init__(self) -> None:
        self._pending: dict[int, str] = {}
        self._tag = 0
        self.confirmed: set[str] = set()
        self.failed: dict[str, str] = {}

    def listen(self, channel: amqp.Channel) -> None:
        """Receive the channel's acks, nacks and returns."""
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.events["basic_return"].add(self._returned)

    def sent(self, message_id: str) -> None:
        """A message was published on the channel."""
        self._tag += 1
        self._pending[self._tag] = message_id

    def waiting(self) -> int:
        """How many messages still wait for their confirm."""
        return len(self._pending)

    def unconfirmed(self, batch: list[Batch]) -> list[str]:
        """The event ids of the messages in batch that were not confirmed (published or not)."""
        return [e for item in batch if item.message_id not in self.confirmed for e in item.event_ids]

    def _settled(self, tag: int, multiple: bool) -> list[str]:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        return [self._pending.pop(t) for t in tags if t in self._pending]

    def _ack(self, tag: int, multiple: bool) -> None:
        for message_id in self._settled(tag, multiple):
            if message_id not in self.failed:  # a returned message is acked too
                self.confirmed.add(message_id)

    def _nack(self, tag: int, multiple: bool) -> None:
        for message_id in self._settled(tag, multiple):
            self.failed[message_id] = "nacked by the broker"

    def _returned(self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
        message_id = message.properties.get("message_id", "")
        self.failed[message_id] = f"returned, no queue {routing_key!r}: {exc}"


def publish_lines(publisher: Publisher, lines: Iterable[str],
                  batch_size: int = 500) -> Iterable[tuple[int, str | None, str | None]]:
    """(line number, event id, error) for each non-blank JSON line; bad lines do not stop the good ones.

    Good lines are published in batches with pipelined confirms. If RabbitMQ fails, the lines it
    confirmed are still reported before the BrokerError propagates.
    """
    batch: list[tuple[int, Prepared]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"(line): not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        except RecursionError:
            yield number, None, "(line): nested too deeply to be an event"
            continue
        except ValueError as exc:  # e.g. an integer longer than Python converts (4,300 digits)
            yield number, None, f"(line): not usable JSON: {str(exc).split(';')[0][:200]}"
            continue
        if not isinstance(event, dict):
            yield number, None, "(root): an event must be a JSON object"
            continue
        try:
            batch.append((number, prepare(event)))
        except InvalidEvent as exc:
            yield number, None, str(exc)
        if len(batch) >= batch_size:
            yield from _flush(publisher, batch)
            batch = []
    yield from _flush(publisher, batch)


def _flush(publisher: Publisher, batch: list[tuple[int, Prepared]]) -> Iterable[tuple[int, str, None]]:
    try:
        publisher.publish_prepared([item for _, item in batch])
    except BrokerError as exc:
        missing = set(exc.event_ids)
        yield from ((number, item.event_id, None) for number, item in batch if item.event_id not in missing)
        raise
    yield from ((number, item.event_id, None) for number, item in batch)
