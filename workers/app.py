"""The Dramatiq application: `dramatiq workers.app:setup` builds the broker and declares the actors.

Nothing here runs at import: Dramatiq's CLI calls `setup()` in each worker process.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Callable

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from workers.admit import Admitter
from workers.config import Config
from workers.constants import MAX_PRIORITY, Kind, MailService, Queue
from workers.control import declare_control_actor
from workers.delivery import Deliverer
from workers.logs import configure_logging
from workers.middleware.redaction import DropTracebacks
from workers.runtime import Runtime
from workers.scheduler import hand_on_due

log = logging.getLogger(__name__)

# Store or broker outages raise out of an actor: Dramatiq retries with backoff (up to ~1 h).
ACTOR_OPTIONS = {"max_retries": 30, "min_backoff": 1_000, "max_backoff": 300_000, "time_limit": 3_600_000}


def build_broker(config: Config) -> dramatiq.Broker:
    """A RabbitMQ broker with priority queues, plus deskmail's middleware.

    Workers publish without confirms: the ledger row in PostgreSQL is the truth and a transport
    message is only a wake-up; one lost in a broker crash is re-sent by the scheduler after
    DESKMAIL_STALE_AFTER. Publishers of events do use confirms (producers/publisher.py).
    """
    broker = RabbitmqBroker(url=with_timeouts(config.amqp_url), confirm_delivery=False, max_priority=MAX_PRIORITY)
    broker.add_middleware(DropTracebacks())
    return broker


BROKER_TIMEOUTS = {"heartbeat": "30", "blocked_connection_timeout": "60", "socket_timeout": "10",
                   "stack_timeout": "30"}


def with_timeouts(url: str) -> str:
    """The AMQP URL with heartbeats and timeouts, so a dead or stalled broker is noticed; the URL's own win."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode({**BROKER_TIMEOUTS, **query})))


def enqueuer(broker: dramatiq.Broker) -> Callable[[MailService, list[str], int], None]:
    """A function handing event ids to their transport's queue as one message, with the mails' priority.

    Record mails go to the record actor of the queue, which workers run before notifications.
    """
    def enqueue(service: MailService, event_ids: list[str], priority: int) -> None:
        queue = service.queue
        actor = queue.record_actor if priority >= Kind.RECORD.priority else queue
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=([str(i) for i in event_ids],),
                                        kwargs={}, options={"broker_priority": priority}))
    return enqueue


def declare_actors(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare the admit actor and one transport actor per mail service on `broker`."""
    store, enqueue = runtime.store, enqueuer(broker)
    admitter = Admitter(store, enqueue, runtime.config.attachment_caps())
    for name, priority in ((Queue.ADMIT.record_actor, 0), (Queue.ADMIT, 10)):
        dramatiq.Actor(admitter, broker=broker, actor_name=name, queue_name=Queue.ADMIT, priority=priority,
                       options=dict(ACTOR_OPTIONS))
    for service in MailService:  # in a worker, a lower priority number runs first
        deliverer = Deliverer(service, store, runtime.settings, runtime.transports, runtime.config, runtime.leases,
                              runtime.worker, enqueue)
        for name, priority in ((service.queue.record_actor, 0), (service.queue, 10)):
            dramatiq.Actor(deliverer, broker=broker, actor_name=name, queue_name=service.queue,
                           priority=priority, options=dict(ACTOR_OPTIONS))
    declare_control_actor(broker, runtime, lambda: hand_on_due(store, enqueue))


def setup(config: Config | None = None) -> dramatiq.Broker:
    """Entry point for `dramatiq workers.app:setup`: configure logging, broker and actors."""
    config = config or Config.from_env()
    configure_logging(config.log_level)
    broker = build_broker(config)
    dramatiq.set_broker(broker)
    declare_actors(broker, Runtime(config))
    log.info("deskmail worker ready: %s", config.redacted())
    return broker
