"""Every admin write is a control action: settings set (secrets sealed before they leave the command),
keys rotate, project pause and unpause; each applied with its answer and an audit row."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pika

from deskmail.producers.control import control_message
from tests.conftest import TEST_KEY, wait_until
from tests.integration.helpers import smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.app import build_broker
from deskmail.workers.constants import Queue
from deskmail.workers.control import Controller
from deskmail.workers.secrets import SecretBox, generate_key

CANARY = "Canary-Secret-4711"


class SmtpPeerAddress:
    """Where settings point when no mail is sent in the test."""

    host, port = "mail.example.org", 587


def deskmail(config, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESKMAIL_DATABASE_URL": config.database_url, "DESKMAIL_AMQP_URL": config.amqp_url,
           "DESKMAIL_SECRET_KEYS": TEST_KEY, "DESKMAIL_CONTROL_KEY": config.control_key, **env}
    return subprocess.run([sys.executable, "-m", "deskmail.producers.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_settings_set_puts_only_sealed_secrets_on_the_broker_and_the_worker_saves_them(config, runtime, store,
                                                                                      worker, tmp_path: Path):
    broker = build_broker(config)
    broker.declare_queue(Queue.CONTROL, ensure=True)
    broker.close()
    path = tmp_path / "s.json"
    with SmtpPeer() as peer:
        path.write_text(json.dumps(smtp_settings(peer, password=CANARY)))
    done = deskmail(config, "settings", "set", "alpha", "--file", str(path), DESKMAIL_CONTROL_TIMEOUT="1")
    assert done.returncode == 1 and "no control worker answered" in done.stderr  # nobody consumes yet
    connection = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
    channel = connection.channel()
    method, _props, body = channel.basic_get(Queue.CONTROL, auto_ack=False)
    on_the_wire = json.loads(body)["args"][0]
    channel.basic_nack(method.delivery_tag, requeue=True)
    connection.close()
    assert CANARY.encode() not in body and on_the_wire["action"] == "settings.set"
    assert SecretBox([TEST_KEY]).open("alpha", on_the_wire["sealed_secrets"].encode()) == {"smtp.password": CANARY}
    worker()
    wait_until(lambda: store.get_project("alpha") and store.get_project("alpha").settings)
    assert runtime.settings.load("alpha").document["smtp"]["password"] == CANARY
    assert bytes(store.get_project("alpha").secrets) == on_the_wire["sealed_secrets"].encode()
    (entry,) = store.audit()
    assert entry["action"] == "settings.set" and entry["result"]["ok"] and CANARY not in json.dumps(entry, default=str)
    assert entry["params"]["sealed_secrets"] == "(sealed)"


def test_settings_with_a_secret_in_clear_text_are_refused_by_the_worker(config, store):
    document = smtp_settings(SmtpPeerAddress(), password=CANARY)
    message = control_message("settings.set", "", project="alpha", settings=document)
    Controller(store, "", 600, lambda *a: None)(message)
    answer = store.control_answer(message["request_id"])
    assert not answer["ok"] and "clear text" in answer["error"] and store.get_project("alpha") is None


def test_settings_set_by_command_answers_with_the_workers_verdict(config, store, worker, tmp_path: Path):
    worker()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(smtp_settings(SmtpPeerAddress(), password=CANARY)))
    other_keys = deskmail(config, "settings", "set", "alpha", "--file", str(path), DESKMAIL_SECRET_KEYS=generate_key())
    assert other_keys.returncode == 1
    assert "NOT saved" in other_keys.stderr and "DESKMAIL_SECRET_KEYS" in other_keys.stderr
    assert store.get_project("alpha") is None


def test_keys_rotate_is_applied_by_the_worker_under_its_newest_key_and_audited(config, runtime, store, worker):
    runtime.settings.save("alpha", smtp_settings(SmtpPeerAddress(), password=CANARY))
    newest = generate_key()
    worker(cfg=dataclasses.replace(config, secret_keys=(newest, TEST_KEY)))
    done = deskmail(config, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    assert "1 project(s)" in done.stdout
    assert SecretBox([newest]).open("alpha", store.get_project("alpha").secrets)["smtp.password"] == CANARY
    assert [e["action"] for e in store.audit()] == ["keys.rotate"]


def test_project_pause_and_unpause_are_commands_and_audited(config, store, worker):
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO projects (key) VALUES ('alpha')")
    worker()
    assert deskmail(config, "project", "pause", "alpha").returncode == 0
    assert store.get_project("alpha").paused_reason == "admin"
    assert deskmail(config, "project", "unpause", "alpha").returncode == 0
    assert store.get_project("alpha").paused_reason is None
    unknown = deskmail(config, "project", "pause", "nowhere")
    assert unknown.returncode == 1 and "deskmail: unknown project" in unknown.stderr
    assert [e["action"] for e in store.audit()] == ["project.unpause", "project.pause"]  # the unknown one never left
