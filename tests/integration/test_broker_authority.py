"""Only admins steer the mail: deploy/rabbitmq/definitions.json's roles on the real broker, and the queue guard.

The definitions are loaded with `rabbitmqctl import_definitions` under names of this test's own
(vhosts and users deleted afterwards); the workers run as the worker role, events come from the
publisher role, and commands from the admin role.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import amqp
import dramatiq
import pika
import pytest

from deskmail.producers import control
from deskmail.producers.publisher import Publisher
from tests.conftest import AMQP_HOST, wait_until
from tests.integration.test_controls import over_limit
from tests.peers.smtp import SmtpPeer
from deskmail.workers.admit import Admitter
from deskmail.workers.config import Config
from deskmail.workers.constants import Queue
from deskmail.workers.deadletters import drain
from deskmail.workers.errors import BrokerError, ConfigurationError

DEFINITIONS = Path(__file__).parents[2] / "deploy" / "rabbitmq" / "definitions.json"
PASSWORD = "role-test-Pa55"


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def import_definitions(text: str) -> None:
    """rabbitmqctl runs as the rabbitmq user: the file must be readable by it (pytest's tmp_path is not)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as file:
        file.write(text)
        file.flush()
        os.chmod(file.name, 0o644)
        ctl("import_definitions", file.name)


@pytest.fixture
def roles():
    """The shipped definitions loaded under this test's own names: {role: (data url, control url)}."""
    suffix = uuid.uuid4().hex[:8]
    names = {"deskmail-control": f"deskmail-test-{suffix}-control", "deskmail": f"deskmail-test-{suffix}",
             "deskmail-publisher": f"dm-{suffix}-publisher", "deskmail-worker": f"dm-{suffix}-worker",
             "deskmail-admin": f"dm-{suffix}-admin"}
    text = DEFINITIONS.read_text()
    for old, new in names.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    users = [names[f"deskmail-{r}"] for r in ("publisher", "worker", "admin")]
    try:
        import_definitions(text)
        for user in users:
            wait_until(lambda user=user: subprocess.run(["rabbitmqctl", "-q", "change_password", user, PASSWORD],
                                                        capture_output=True).returncode == 0, timeout=30)
        wait_until(lambda: _queues(names["deskmail"]) >= 16, timeout=30)  # the import is asynchronous
        urls = {role: tuple(f"amqp://{names['deskmail-' + role]}:{PASSWORD}@{AMQP_HOST}:5672/{names[v]}"
                            for v in ("deskmail", "deskmail-control"))
                for role in ("publisher", "worker", "admin")}
        yield urls
    finally:
        for user in users:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)
        for vhost in (names["deskmail"], names["deskmail-control"]):
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


def _queues(vhost: str) -> int:
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"], capture_output=True, text=True)
    return len(done.stdout.split()) - 1 if done.returncode == 0 else 0


@pytest.fixture
def workers(config, runtime, roles):
    """A data worker and a control worker running as the worker role, on their two vhosts."""
    from deskmail.workers.app import control as control_setup, setup
    data_url, control_url = roles["worker"]
    cfg = dataclasses.replace(config, amqp_url=data_url, control_amqp_url=control_url)
    started = []
    for entry in (setup, control_setup):
        broker = entry(cfg)
        w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        w.start()
        started.append((w, broker))
    yield cfg
    for w, broker in started:
        w.stop(timeout=10_000)
        broker.close()


def envelope(message: dict, queue: str = Queue.ADMIT, actor: str = Queue.CONTROL) -> bytes:
    return json.dumps({"queue_name": queue, "actor_name": actor, "args": [message], "kwargs": {}, "options": {},
                       "message_id": str(uuid.uuid4()), "message_timestamp": int(time.time() * 1000)}).encode()


def test_a_publisher_role_user_cannot_resume_suspend_or_change_limits_or_settings(config, runtime, store, roles,
                                                                                workers, peer, tls_ca):
    publisher_data, publisher_control = roles["publisher"]
    with Publisher(publisher_data, timeout=5) as events:
        backlog = over_limit(runtime, store, events, peer, tls_ca, n=3, per_day=1)
        # Signed with the real key: the broker's permissions hold even where the key has leaked.
        attempts = [control.control_message("backlog.resume", config.control_key, all=True, project="alpha"),
                    control.control_message("backlog.suspend", config.control_key, ids=backlog),
                    control.control_message("limits.set", config.control_key, project="alpha", per_day=None),
                    control.control_message("auto_resume.set", config.control_key, project="alpha", enabled=True),
                    control.control_message("settings.set", config.control_key, project="alpha",
                                            settings={"mail_service": "smtp", "from_address": "x@evil.example",
                                                      "smtp": {"host": "evil.example", "auth": "none"}})]
        for message in attempts:
            with pytest.raises(BrokerError, match="could not route"):  # no control queue on the data vhost
                events.publish_raw(envelope(message, Queue.CONTROL), message["request_id"], 9, Queue.CONTROL)
            events.publish_raw(envelope(message), message["request_id"], 9, Queue.ADMIT)  # no such actor there
    with pytest.raises((BrokerError, amqp.exceptions.NotAllowed), match="refused"):  # no access to that vhost
        with Publisher(publisher_control, timeout=5) as sneaky:
            sneaky.publish_raw(envelope(attempts[0], Queue.CONTROL, Queue.CONTROL), attempts[0]["request_id"], 9,
                               Queue.CONTROL)
    admit = Admitter(store, lambda *a: None)
    wait_until(lambda: drain(workers.amqp_url, admit) or None, timeout=20)
    project = store.get_project("alpha")
    assert project.per_day == 1 and not project.auto_resume and project.settings["smtp"]["host"] == peer.host
    assert all(store.get_mail(i).state == "backlog" for i in backlog)
    assert all(store.control_answer(m["request_id"]) is None for m in attempts)
    rejected = [m for m in map(store.get_mail, store_ids(store)) if m.state == "rejected"]
    assert len(rejected) == len(attempts) and all("deskmail.control" in m.detail for m in rejected)
    # The admin role's command on the control vhost is applied.
    with Publisher(roles["admin"][1], timeout=5) as admin:
        answer = control.send(admin, store, control.control_message(
            "backlog.resume", config.control_key, all=True, project="alpha"), timeout=15)
    assert answer["ok"] and answer["touched"] == 2
    wait_until(lambda: all(store.get_mail(i).state == "sent" for i in backlog))


def store_ids(store) -> list[str]:
    with store.pool.connection() as conn:
        return [r["event_id"] for r in conn.execute("SELECT event_id FROM mail ORDER BY seq").fetchall()]


def test_the_broker_refuses_the_publisher_role_a_connection_to_the_control_vhost(roles):
    _, control_url = roles["publisher"]
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(control_url))


def test_a_control_action_on_the_admit_queue_is_refused_and_recorded_even_with_a_good_signature(
        config, runtime, store, worker, publisher):
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO projects (key) VALUES ('alpha')")
    worker()
    message = control.control_message("project.pause", config.control_key, project="alpha")
    publisher.publish_raw(envelope(message), message["request_id"], 9, Queue.ADMIT)
    claims_control = control.control_message("project.pause", config.control_key, project="alpha")
    publisher.publish_raw(envelope(claims_control, queue=Queue.CONTROL), claims_control["request_id"], 9,
                          Queue.ADMIT)  # its body claims the control queue; it came from deskmail.admit
    wait_until(lambda: len([m for m in map(store.get_mail, store_ids(store)) if m.state == "rejected"]) == 2)
    assert store.get_project("alpha").paused_reason is None
    for m in (message, claims_control):
        assert store.control_answer(m["request_id"]) is None
        assert "takes messages only from queue 'deskmail.control'" in store.control_refusal(m["request_id"])
    assert {r["action"] for r in store.audit()} == {"project.pause"} and len(store.audit()) == 2


def test_a_delayed_message_cannot_be_moved_onto_the_control_queue_by_the_worker(config, runtime, store, worker,
                                                                                publisher):
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO projects (key) VALUES ('alpha')")
    worker()
    message = control.control_message("project.pause", config.control_key, project="alpha")
    body = json.loads(envelope(message, queue="deskmail.control.DQ"))
    body["options"] = {"eta": int(time.time() * 1000)}
    publisher.publish_raw(json.dumps(body).encode(), message["request_id"], 9, "deskmail.admit.DQ")
    wait_until(lambda: store.control_refusal(message["request_id"]))
    assert store.get_project("alpha").paused_reason is None and store.control_answer(message["request_id"]) is None


def test_a_worker_with_the_control_actor_and_no_key_refuses_to_start(config):
    from deskmail.workers.app import control as control_setup, setup
    keyless = dataclasses.replace(config, control_key="")
    for entry in (setup, control_setup):
        with pytest.raises(ConfigurationError, match="DESKMAIL_CONTROL_KEY is not set"):
            entry(keyless)
    setup(dataclasses.replace(keyless, insecure_control=True)).close()
    assert Config.from_env({"DESKMAIL_INSECURE_CONTROL": "1"}).insecure_control


def test_a_data_worker_with_a_control_vhost_needs_no_control_key(config):
    from deskmail.workers.app import setup
    broker = setup(dataclasses.replace(config, control_key="", control_amqp_url=config.amqp_url + "-control"))
    assert Queue.CONTROL not in broker.get_declared_actors()
    broker.close()


def test_the_shipped_queues_have_the_arguments_dramatiq_declares():
    from deskmail.workers.app import build_broker
    broker = build_broker(Config.from_env({}))
    shipped = {(q["vhost"], q["name"]): q["arguments"] for q in json.loads(DEFINITIONS.read_text())["queues"]}
    from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
    for queue in Queue:
        vhost = "deskmail-control" if queue == Queue.CONTROL else "deskmail"
        assert shipped[(vhost, queue)] == broker._build_queue_arguments(queue)
        assert shipped[(vhost, f"{queue}.DQ")] == broker._build_queue_arguments(queue)
        assert shipped[(vhost, f"{queue}.XQ")] == {"x-message-ttl": DEAD_MESSAGE_TTL}
    assert len(shipped) == 3 * len(Queue) + 1  # and the parking queue
