"""Publishing many events at once: pipelined publisher confirms, all or nothing on bad input."""

from __future__ import annotations

import subprocess
import uuid

import pika
import pytest

from deskmail.producers.publisher import InvalidEvent, Publisher
from tests.conftest import AMQP_HOST, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.app import build_broker
from deskmail.workers.constants import Queue
from deskmail.workers.errors import BrokerError


def queued_on_admit(amqp_url: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return conn.channel().queue_declare(Queue.ADMIT, passive=True).method.message_count
    finally:
        conn.close()


def test_a_batch_is_confirmed_and_every_event_is_delivered(runtime, store, worker, publisher):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
        worker()
        ids = publisher.publish_many([event(subject=f"bulk {i}") for i in range(300)], window=50)
        assert len(set(ids)) == 300
        wait_until(lambda: store.project_counts("alpha").get("sent") == 300, timeout=60)
        assert sorted(m.message["Subject"] for m in peer.wait_for(300)) == sorted(f"bulk {i}" for i in range(300))


def test_an_invalid_event_in_a_batch_is_named_and_nothing_is_published(config, runtime, publisher):
    broker = build_broker(config)  # the admit queue, with no worker taking from it
    broker.declare_queue(Queue.ADMIT, ensure=True)
    broker.close()
    before = queued_on_admit(config.amqp_url)
    with pytest.raises(InvalidEvent) as caught:
        publisher.publish_many([event(), event(to=["not-an-address"]), event()])
    assert "events[1].to[0]" in str(caught.value)
    assert queued_on_admit(config.amqp_url) == before
    publisher.publish_many([event(), event()])  # the count does see what a batch publishes: one message
    assert queued_on_admit(config.amqp_url) == before + 1


def test_a_batch_nobody_can_receive_is_reported_with_every_event_id():
    vhost = f"deskmail-empty-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        with Publisher(f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}", timeout=5) as pub:
            events = [event() for _ in range(5)]
            with pytest.raises(BrokerError) as caught:
                pub.publish_many(events)
        assert sorted(caught.value.event_ids) == sorted(e["event_id"] for e in events)
        assert "returned" in str(caught.value)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)
