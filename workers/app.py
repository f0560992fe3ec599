"""The Dramatiq application: `dramatiq workers.app:setup` builds the broker and declares the actors.

Nothing here runs at import: Dramatiq's CLI calls `setup()` in each worker process.
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from typing import Callable

import dramatiq
from dramatiq.middleware import CurrentMessage

from deskmail.workers.admit import Admitter
from deskmail.workers.broker import ArrivalRabbitmqBroker, SafeJSONEncoder
from deskmail.workers.config import Config
from deskmail.workers.errors import ConfigurationError
from deskmail.workers.constants import MAX_PRIORITY, Kind, MailService, Queue
from deskmail.workers.control import declare_control_actor
from deskmail.workers.delivery import Deliverer
from deskmail.workers.gate import GroupWrites
from deskmail.workers.logs import configure_logging
from deskmail.workers.middleware.lifecycle import Lifecycle
from deskmail.workers.middleware.logcontext import LogContext
from deskmail.workers.middleware.metrics import MetricsEndpoint
from deskmail.workers.middleware.queue_guard import QueueGuard
from deskmail.workers.middleware.redaction import DropTracebacks
from deskmail.workers.rejects import refuse_misaddressed
from deskmail.workers.runtime import Runtime
from deskmail.workers.remote_test import declare_test_actors, self_test_dispatcher

log = logging.getLogger(__name__)

# Store or broker outages raise out of an actor: Dramatiq retries with backoff (up to ~1 h).
ACTOR_OPTIONS = {"max_retries": 30, "min_backoff": 1_000, "max_backoff": 300_000, "time_limit": 3_600_000}


def build_broker(config: Config, url: str | None = None) -> ArrivalRabbitmqBroker:
    """A RabbitMQ broker on `url` (default DESKMAIL_AMQP_URL) with priority queues, plus deskmail's middleware.

    Workers publish without confirms: the ledger row in PostgreSQL is the truth and a transport
    message is only a wake-up; one lost in a broker crash is re-sent by the scheduler after
    DESKMAIL_STALE_AFTER. Publishers of events do use confirms (producers/publisher.py).
    """
    dramatiq.set_encoder(SafeJSONEncoder())
    broker = ArrivalRabbitmqBroker(url=with_timeouts(url or config.amqp_url), confirm_delivery=False,
                                   max_priority=MAX_PRIORITY)
    broker.add_middleware(DropTracebacks())
    broker.add_middleware(LogContext())
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


def guard(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Refuse (and record) any message whose actor does not consume the queue it came from, before all else."""
    broker.add_middleware(QueueGuard(refuse_misaddressed(runtime.store, Queue.CONTROL)),
                          before=type(broker.middleware[0]))


def declare_actors(broker: dramatiq.Broker, runtime: Runtime, *, control: bool = True) -> None:
    """Declare the admit actor, one transport actor per mail service and (if `control`) the control actor."""
    store, enqueue = runtime.store, enqueuer(broker)
    admitter = Admitter(store, enqueue, runtime.config.attachment_caps())
    for name, priority in ((Queue.ADMIT.record_actor, 0), (Queue.ADMIT, 10)):
        dramatiq.Actor(admitter, broker=broker, actor_name=name, queue_name=Queue.ADMIT, priority=priority,
                       options=dict(ACTOR_OPTIONS))
    writes = GroupWrites(store, runtime.worker)  # the DATA phases of all the process's sending threads
    for service in MailService:  # in a worker, a lower priority number runs first
        deliverer = Deliverer(service, store, runtime.settings, runtime.transports, runtime.config, runtime.leases,
                              runtime.worker, enqueue, writes)
        for name, priority in ((service.queue.record_actor, 0), (service.queue, 10)):
            dramatiq.Actor(deliverer, broker=broker, actor_name=name, queue_name=service.queue,
                           priority=priority, options=dict(ACTOR_OPTIONS))
    declare_test_actors(broker, runtime)
    if control:
        declare_control_actor(broker, runtime, enqueue, self_test_dispatcher(broker))


def environment() -> Config:
    """The configuration from the environment; a bad setting ends the process with its name, not a traceback."""
    try:
        return Config.from_env()
    except ConfigurationError as exc:
        print(f"deskmail: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def setup(config: Config | None = None) -> dramatiq.Broker:
    """Entry point for `dramatiq workers.app:setup`: configure logging, broker and actors.

    The control actor is declared here only while control messages share the data vhost
    (no DESKMAIL_CONTROL_AMQP_URL); with a control vhost it runs under `deskmail.workers.app:control`.
    """
    config = config or environment()
    configure_logging(config.log_level, config.log_format)
    control_here = config.control_url == config.amqp_url
    if control_here:
        config.require_control_authority()
    broker = build_broker(config)
    if config.metrics_port:
        broker.add_middleware(MetricsEndpoint(config))
    dramatiq.set_broker(broker)
    runtime = Runtime(config)
    guard(broker, runtime)
    broker.add_middleware(Lifecycle(runtime))
    broker.add_middleware(CurrentMessage())  # rejected events are keyed by their message's id
    declare_actors(broker, runtime, control=control_here)
    log.info("deskmail worker ready: %s", config.redacted())
    return broker


def control(config: Config | None = None) -> dramatiq.Broker:
    """Entry point for `dramatiq workers.app:control`: the control actor on DESKMAIL_CONTROL_AMQP_URL.

    Mail a command moves, and the Test action's message, go to the transport queues through a second
    broker on DESKMAIL_AMQP_URL, which this process only publishes to.
    """
    config = config or environment()
    configure_logging(config.log_level, config.log_format)
    config.require_control_authority()
    broker = build_broker(config, config.control_url)
    if config.metrics_port:
        broker.add_middleware(MetricsEndpoint(config))
    dramatiq.set_broker(broker)
    runtime = Runtime(config)
    guard(broker, runtime)
    broker.add_middleware(Lifecycle(runtime))
    data = build_broker(config) if config.control_url != config.amqp_url else broker
    declare_control_actor(broker, runtime, enqueuer(data), self_test_dispatcher(data))
    log.info("deskmail control worker ready: %s", config.redacted())
    return broker
