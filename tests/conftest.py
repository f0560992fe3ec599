"""Shared fixtures: the real PostgreSQL and RabbitMQ (each run in a database and vhost of its own)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import subprocess
import time
import uuid
from typing import Callable, Iterator

import psycopg
import pytest

pytest_plugins = ["tests.peers.fixtures"]

PG_ADMIN = os.environ.get("DESKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("DESKMAIL_TEST_AMQP_HOST", "127.0.0.1")
TEST_KEY = "p8q5cF2F8l8o0z6Xq2Yb7mJx3mO0d3k1tV9g4h5JrQ0="
CONTROL_KEY = "test-control-key-3f9a1c"  # workers refuse to run the control actor without one


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> object:
    """Poll predicate until it returns something truthy, or fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, migrated; dropped at the end."""
    if not _port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (run deploy/local-services.sh)")
    name = f"deskmail_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    from deskmail.workers.store import Store, open_pool
    pool = open_pool(url, 2)
    Store(pool).migrate()
    pool.close()
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test run's own; deleted at the end."""
    if not _port_open(AMQP_HOST, 5672):
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run deploy/local-services.sh)")
    vhost = f"deskmail-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    yield f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


@pytest.fixture
def config(database_url: str, amqp_url: str):
    """A Config for the test database and vhost, loopback allowed, short timers."""
    from deskmail.workers.config import Config
    return dataclasses.replace(
        Config.from_env({}), database_url=database_url, amqp_url=amqp_url, secret_keys=(TEST_KEY,),
        control_key=CONTROL_KEY,
        outbound_allow=(ipaddress.ip_network("127.0.0.0/8"),), retry_base=0.2, retry_cap=1.0,
        smtp_final_reply_timeout=5.0, stale_after=2.0, lease_seconds=4.0, takeover_grace=2.0, db_pool_max=12)


TABLES = ("mail", "attempts", "quota_counters", "projects", "audit", "control_requests", "control_refusals",
          "control_moved", "control_sent", "control_tests",
          "console_users", "console_sessions", "console_login_attempts", "console_oidc_logins", "console_jobs",
          "scheduler_heartbeats", "attachment_blobs", "mail_attachments")


@pytest.fixture
def runtime(config):
    """A Runtime on an emptied database."""
    from deskmail.workers.runtime import Runtime
    rt = Runtime(config)
    with rt.store.pool.connection() as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES))
        conn.execute("UPDATE global_limits SET per_day = NULL, recipients_per_mail = NULL, time_zone = 'UTC'")
    yield rt
    rt.close()


@pytest.fixture
def store(runtime):
    """The store of the test runtime."""
    return runtime.store


def purge_queues(amqp_url: str) -> None:
    """Empty deskmail's queues (and their delay and dead-letter queues) in a test vhost."""
    import pika
    from deskmail.workers.constants import Queue
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in Queue:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel = conn.channel()
                try:
                    channel.queue_purge(name)
                except Exception:  # noqa: BLE001 - a queue not declared yet has nothing to purge
                    pass
    finally:
        conn.close()


@pytest.fixture
def worker(config, runtime) -> Iterator[Callable[..., object]]:
    """Start an in-process Dramatiq worker on the real broker: `worker(threads=4)`."""
    import dramatiq
    from deskmail.workers.app import setup
    started: list[tuple[dramatiq.Worker, dramatiq.Broker]] = []

    def start(threads: int = 4, cfg=None):
        broker = setup(cfg or config)
        w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        w.start()
        started.append((w, broker))
        wait_until(lambda: not broker.queues_pending)  # its consumers have declared every queue
        return broker

    purge_queues(config.amqp_url)
    yield start
    for w, broker in started:
        w.stop(timeout=10_000)
        broker.close()


@pytest.fixture
def publisher(config):
    """A Publisher on the test vhost."""
    from deskmail.producers.publisher import Publisher
    with Publisher(config.amqp_url, timeout=5) as pub:
        yield pub
