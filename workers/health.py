"""Health checks: database reachable and migrated, broker reachable, queues consumed, scheduler alive.

Used by `deskmail healthcheck` and by /readyz. Every check runs under DESKMAIL_HEALTH_TIMEOUT, in threads
of its own, so an unreachable or silent peer is reported within that time instead of hanging.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import pika
import pika.exceptions
import psycopg
from psycopg.rows import DictRow, dict_row

from deskmail.workers import sql
from deskmail.workers.config import Config, redact_url
from deskmail.workers.constants import MailService, Queue
from deskmail.workers.errors import StoreError
from deskmail.workers.store import Store


class Cause(enum.IntEnum):
    """What is wrong, as the exit status of `deskmail healthcheck` (0: nothing)."""

    OK = 0
    DATABASE_UNREACHABLE = 3
    NOT_MIGRATED = 4
    BROKER_UNREACHABLE = 5
    QUEUE_WITHOUT_CONSUMER = 6
    SCHEDULER_STALE = 7


@dataclass(frozen=True)
class Check:
    """One check's result."""

    name: str
    ok: bool
    detail: str
    cause: Cause = Cause.OK


@dataclass(frozen=True)
class Report:
    """Every check's result; `cause` is the most basic failure (the database before the broker, and so on)."""

    checks: tuple[Check, ...]
    consumers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def cause(self) -> Cause:
        """The exit status: the lowest failing cause, or OK."""
        return min((c.cause for c in self.checks if not c.ok), default=Cause.OK)

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {"ok": self.ok, "exit_status": int(self.cause), "cause": self.cause.name.lower(),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail,
                            **({"cause": c.cause.name.lower()} if not c.ok else {})} for c in self.checks],
                "consumers": self.consumers, "seconds": round(self.seconds, 3)}


class OneConnection:
    """Stands in for a pool: the store's methods run on one connection opened with a connect timeout."""

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def connection(self, **options: object) -> Iterator[psycopg.Connection[DictRow]]:
        """The one connection."""
        yield self.conn

    def close(self) -> None:
        """Nothing to do: the caller's `with` block closes the connection."""


def _database(config: Config, heartbeat: bool) -> tuple[list[Check], set[str] | None]:
    """Connect once; check migrations, read the services in use and the scheduler's heartbeat."""
    where = redact_url(config.database_url)
    try:
        conn = psycopg.connect(config.database_url, connect_timeout=max(2, math.ceil(config.health_timeout)),
                               autocommit=True, row_factory=dict_row,
                               options=f"-c statement_timeout={int(config.health_timeout * 1000)}")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "does not exist" in str(exc):
            first += ": run `deskmail db migrate`, which creates it"
        return [Check("database", False, f"cannot connect to {where}: {first}", Cause.DATABASE_UNREACHABLE)], None
    with conn:
        checks = [Check("database", True, f"connected to {where}")]
        store = Store(OneConnection(conn))
        wanted = [name for name, _ in sql.migrations()]
        try:
            applied = store.applied_migrations()
        except StoreError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                return [*checks, Check("migrations", False, str(exc), Cause.DATABASE_UNREACHABLE)], None
            applied = []
        missing = [m for m in wanted if m not in applied]
        if missing:
            checks.append(Check("migrations", False, f"{len(missing)} migration(s) not applied ({', '.join(missing)}): "
                                "run `deskmail db migrate`", Cause.NOT_MIGRATED))
            return checks, None
        checks.append(Check("migrations", True, f"all {len(wanted)} applied"))
        services = store.services_in_use()
        if heartbeat:
            beat = store.last_heartbeat(config.heartbeat_max_age)
            if beat.age is None:
                checks.append(Check("scheduler", False, "no scheduler has ever run: start `deskmail scheduler`",
                                    Cause.SCHEDULER_STALE))
            elif not beat.fresh:
                checks.append(Check("scheduler", False, f"last heartbeat {beat.age:.0f} s ago (more than "
                                    f"DESKMAIL_HEARTBEAT_MAX_AGE={config.heartbeat_max_age:g}): is `deskmail "
                                    "scheduler` running?", Cause.SCHEDULER_STALE))
            else:
                checks.append(Check("scheduler", True, f"{beat.fresh} alive, last heartbeat {beat.age:.1f} s ago"))
        return checks, services


def _broker(config: Config) -> tuple[Check, dict[str, int]]:
    """Connect and read each deskmail queue's consumer count with a passive declare (no management API);
    deskmail.control is looked up on the control vhost when DESKMAIL_CONTROL_AMQP_URL sets one."""
    where: dict[str, list[str]] = {}
    for queue in Queue:
        where.setdefault(config.control_url if queue is Queue.CONTROL else config.amqp_url, []).append(queue)
    consumers: dict[str, int] = {}
    for url, queues in where.items():
        failed = _count_consumers(url, queues, config.health_timeout, consumers)
        if failed:
            return Check("broker", False, f"cannot connect to {redact_url(url)}: {failed}",
                         Cause.BROKER_UNREACHABLE), consumers
    return Check("broker", True, "connected to " + ", ".join(redact_url(u) for u in where)), consumers


def _count_consumers(url: str, queues: list[str], timeout: float, into: dict[str, int]) -> str | None:
    """Fill `into` with each queue's consumer count (-1: not declared); the connection failure, or None."""
    params = pika.URLParameters(url)
    params.socket_timeout = params.stack_timeout = params.blocked_connection_timeout = timeout
    params.connection_attempts, params.retry_delay = 1, 0
    try:
        conn = pika.BlockingConnection(params)
    except Exception as exc:  # noqa: BLE001 - every pika failure means "unreachable" here
        said = str(exc.args[0]) if exc.args else ""
        return f"{type(exc).__name__} {said[:300]}".strip()
    try:
        for queue in queues:
            channel = conn.channel()
            try:
                into[queue] = channel.queue_declare(queue, passive=True).method.consumer_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:  # 404: never declared, so nobody consumes it
                into[queue] = -1
    finally:
        conn.close()
    return None


def _consumers(consumers: dict[str, int], required: list[str]) -> Check:
    missing = [f"{q} ({'not declared' if consumers.get(q, -1) < 0 else 'no consumer'})"
               for q in required if consumers.get(q, -1) <= 0]
    if missing:
        return Check("consumers", False, "no worker consumes " + ", ".join(missing) +
                     ": start `dramatiq workers.app:setup -Q QUEUE`", Cause.QUEUE_WITHOUT_CONSUMER)
    return Check("consumers", True, ", ".join(f"{q}: {consumers[q]}" for q in required))


def required_queues(services: set[str] | None) -> list[str]:
    """Admission, control, and the transport queue of every mail service a project uses."""
    transports = [MailService(s).queue for s in sorted(services or ()) if s in set(MailService)]
    return [Queue.ADMIT, Queue.CONTROL, *transports]


def run(config: Config, *, queues: list[str] | None = None, consumers: bool = True,
        heartbeat: bool = True) -> Report:
    """Run the checks in parallel, each bounded by config.health_timeout."""
    # A passive declare of a queue nobody declared yet is answered 404; that is a finding, not a warning.
    # pika logs every failed connection attempt with a traceback; the report says it in one line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    started = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="health")
    db, mq = pool.submit(_database, config, heartbeat), pool.submit(_broker, config)
    pool.shutdown(wait=False)
    deadline = config.health_timeout + 1.0
    try:
        db_checks, services = db.result(timeout=deadline)
    except StoreError as exc:  # the connection broke while reading
        db_checks, services = [Check("database", False, str(exc), Cause.DATABASE_UNREACHABLE)], None
    except concurrent.futures.TimeoutError:
        db_checks, services = [Check("database", False, f"no answer from {redact_url(config.database_url)} "
                                     f"within {config.health_timeout:g} s", Cause.DATABASE_UNREACHABLE)], None
    try:
        broker, counts = mq.result(timeout=deadline)
    except concurrent.futures.TimeoutError:
        broker, counts = Check("broker", False, f"no answer from {redact_url(config.amqp_url)} within "
                               f"{config.health_timeout:g} s", Cause.BROKER_UNREACHABLE), {}
    checks = [*db_checks, broker]
    if consumers and broker.ok:
        checks.append(_consumers(counts, queues or required_queues(services)))
    return Report(tuple(checks), counts, time.monotonic() - started)
