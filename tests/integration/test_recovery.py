"""What the scheduler recovers: dead letters, mails a dead worker left in `sending`, lost wake-ups."""

from __future__ import annotations

import pika
import pytest

from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from workers.admit import Admitter
from workers.app import build_broker, enqueuer
from workers.deadletters import ADMIT_DEAD_LETTERS, drain
from workers.scheduler import Scheduler


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def test_undecodable_message_in_the_dead_letter_queue_is_kept_as_rejected(config, store, worker):
    worker()  # declares deskmail.admit and its XQ
    conn = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
    conn.channel().basic_publish("", ADMIT_DEAD_LETTERS, b"\xff not json at all")
    conn.close()
    broker = build_broker(config)
    assert drain(config.amqp_url, Admitter(store, enqueuer(broker))) == 1
    rejected = store.counts()["(none)"]
    assert rejected == {"rejected": 1}


def test_mail_left_in_sending_by_a_dead_worker_is_sent_again_once_then_ambiguous(config, runtime, store, worker,
                                                                                 publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    ev = event()
    admission = store.admit(ev | {"to": [{"address": "user@example.com"}]}, priority=1, recipients=1)
    assert admission.state == "queued"
    assert store.claim(ev["event_id"]) is not None  # a worker claimed it, then died
    broker = worker()
    scheduler = Scheduler(store, enqueuer(broker), config)
    wait_until(lambda: scheduler.tick()["recovered"] == 1, timeout=10)
    wait_until(lambda: store.get_mail(ev["event_id"]).state == "sent")
    mail = store.get_mail(ev["event_id"])
    assert mail.takeovers == 1 and len(peer.wait_for(1)) == 1

    second = event()
    store.admit(second | {"to": [{"address": "user@example.com"}]}, priority=1, recipients=1)
    with store.pool.connection() as conn:  # it died in `sending` twice
        conn.execute("UPDATE mail SET state = 'sending', takeovers = 1, claimed_at = now() - interval '1 hour' "
                     "WHERE event_id = %s", (second["event_id"],))
    scheduler.tick()
    mail = store.get_mail(second["event_id"])
    assert mail.state == "ambiguous" and "may or may not" in mail.detail
