"""An event's whole way: publisher -> RabbitMQ -> admit -> PostgreSQL -> SMTP actor -> real SMTP server."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from deskmail.producers.publisher import InvalidEvent, envelope
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.constants import TRANSPORT_BATCH, Queue

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def peer(tls_ca):
    """A STARTTLS + AUTH SMTP server under the tests' CA."""
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as p:
        yield p


def state_of(store, event_id: str) -> str | None:
    mail = store.get_mail(event_id)
    return mail.state if mail else None


def wait_state(store, event_id: str, *states: str, timeout: float = 20):
    wait_until(lambda: state_of(store, event_id) in states, timeout)
    return store.get_mail(event_id)


def test_event_travels_to_the_smtp_server_over_starttls_with_auth(runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    worker()
    ev = event(to=["a@example.com"], cc=["b@example.com"], bcc=["c@example.com"], subject="Ticket #7 closed")
    event_id = publisher.publish(ev)
    mail = wait_state(store, event_id, "sent")
    [received] = peer.wait_for(1)
    assert received.auth_user == "desk"
    assert received.mail_from == "desk@example.org"
    assert sorted(received.rcpt_tos) == ["a@example.com", "b@example.com", "c@example.com"]
    message = received.message
    assert message["Subject"] == "Ticket #7 closed"
    assert message["Message-ID"] == f"<{event_id}@example.org>" == mail.message_id
    assert "c@example.com" not in received.data.decode()  # Bcc never in the headers
    assert mail.sent_at is not None and mail.detail.startswith("250")


def test_republished_event_is_sent_once(runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    worker()
    ev = event()
    publisher.publish(ev)
    publisher.publish(ev)
    wait_state(store, ev["event_id"], "sent")
    second = event()
    publisher.publish(second)
    wait_state(store, second["event_id"], "sent")
    ids = [m.message["Message-ID"] for m in peer.wait_for(2)]
    assert ids.count(f"<{ev['event_id']}@example.org>") == 1 and len(ids) == 2


def test_publisher_refuses_a_header_that_is_not_x_and_names_the_field(publisher):
    with pytest.raises(InvalidEvent) as caught:
        publisher.publish(event(headers={"Bcc": "evil@example.net"}))
    assert "headers" in str(caught.value) and "X-" in str(caught.value)


def test_invalid_event_from_a_foreign_publisher_is_kept_as_rejected(runtime, store, worker, publisher):
    worker()
    bad = event(subject="hi\r\nBcc: evil@example.net")
    publisher.publish_raw(envelope(bad), bad["event_id"], 1, Queue.ADMIT)
    mail = wait_state(store, bad["event_id"], "rejected")
    assert mail.reason == "invalid_event" and "subject" in mail.detail


def test_garbage_arguments_are_rejected_not_lost(runtime, store, worker, publisher):
    worker()
    body = json.dumps({"queue_name": Queue.ADMIT, "actor_name": Queue.ADMIT, "args": ["not an event", 3],
                       "kwargs": {}, "options": {}, "message_id": str(uuid.uuid4()),
                       "message_timestamp": 0}).encode()
    publisher.publish_raw(body, "x", 1, Queue.ADMIT)
    wait_until(lambda: store.counts().get("(none)", {}).get("rejected") == 1)


def test_unknown_project_is_rejected_with_the_reason(store, worker, publisher):
    worker()
    ev = event(project="nowhere")
    publisher.publish(ev)
    mail = wait_state(store, ev["event_id"], "rejected")
    assert mail.reason == "unknown_project" and "nowhere" in mail.detail


def test_project_without_settings_uses_the_default_project(runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("default", smtp_settings(peer, tls_ca.ca_path))
    ev = event(project="beta")
    worker()
    publisher.publish(ev)
    wait_state(store, ev["event_id"], "sent")
    assert peer.wait_for(1)[0].mail_from == "desk@example.org"


def test_mail_over_daily_limit_goes_to_backlog_intact(runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=2))
    worker()
    ids = [publisher.publish(event(subject=f"n{i}")) for i in range(4)]
    wait_until(lambda: sorted(str(state_of(store, i)) for i in ids) == ["backlog", "backlog", "sent", "sent"])
    backlog = [store.get_mail(i) for i in ids if state_of(store, i) == "backlog"]
    assert {m.reason for m in backlog} <= {"daily_limit", "project_paused"}
    assert len(peer.messages) == 2
    kept = {m.event["subject"] for m in backlog} | {str(r.message["Subject"]) for r in peer.messages}
    assert kept == {"n0", "n1", "n2", "n3"} and all(m.event["text"] == "Hello.\n" for m in backlog)


def test_recipient_refused_one_by_one_is_recorded_and_the_rest_sent(runtime, store, worker, publisher, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                  rcpt_replies={"gone@example.com": "550 5.1.1 no such user"}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        worker()
        ev = event(to=["ok@example.com", "gone@example.com"])
        publisher.publish(ev)
        mail = wait_state(store, ev["event_id"], "sent")
        assert mail.refused == {"gone@example.com": "550 5.1.1 no such user"}
        assert peer.wait_for(1)[0].rcpt_tos == ("ok@example.com",)


def test_permanent_refusal_fails_with_the_servers_words(runtime, store, worker, publisher, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                  data_reply="554 5.6.0 message rejected by policy") as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        worker()
        ev = event()
        publisher.publish(ev)
        mail = wait_state(store, ev["event_id"], "failed")
        assert "554 5.6.0 message rejected by policy" in mail.detail


def test_transient_refusal_is_retried_until_sent(runtime, store, worker, publisher, tls_ca, config):
    replies = iter(["451 4.3.0 try later", None])
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                  data_reply=lambda envelope: next(replies)) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        broker = worker()
        ev = event()
        publisher.publish(ev)
        mail = wait_until(lambda: (m := store.get_mail(ev["event_id"])) and m.attempts == 1 and m.state == "queued"
                          and m)
        assert "451 4.3.0 try later" in mail.detail
        from deskmail.workers.app import enqueuer
        from deskmail.workers.scheduler import Scheduler
        scheduler = Scheduler(store, enqueuer(broker), config)
        wait_until(lambda: scheduler.tick()["due"] == 1 or state_of(store, ev["event_id"]) == "sent")
        mail = wait_state(store, ev["event_id"], "sent")
        assert mail.attempts == 2 and len(peer.wait_for(1)) == 1


def test_wrong_password_fails_as_a_configuration_error_without_the_password(runtime, store, worker, publisher,
                                                                            peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="wrong-Secret-99"))
    worker()
    ev = event()
    publisher.publish(ev)
    mail = wait_state(store, ev["event_id"], "failed")
    assert mail.reason == "configuration" and "535" in mail.detail and "wrong-Secret-99" not in mail.detail
    assert "535" in store.get_project("alpha").config_error


def test_many_worker_threads_racing_one_daily_limit_send_exactly_the_limit(runtime, store, worker, publisher,
                                                                          peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=25))
    worker(threads=16)
    worker(threads=16)
    ids: list[str] = []
    lock = threading.Lock()

    def burst() -> None:
        for i in range(40):
            eid = publisher.publish(event(subject=f"race {i}"))
            with lock:
                ids.append(eid)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: all(state_of(store, i) in ("sent", "backlog") for i in ids), timeout=60)
    states = [state_of(store, i) for i in ids]
    assert states.count("sent") == 25 and states.count("backlog") == 135
    assert len(peer.wait_for(25)) == 25
    assert store.sent_today("alpha", "UTC") == 25


def test_a_successful_send_clears_the_projects_configuration_error(runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="wrong-Secret-99"))
    worker()
    first = publisher.publish(event())
    wait_state(store, first, "failed")
    assert store.get_project("alpha").config_error
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    store.record_config_error("alpha", "535 still shown until a send works")
    second = publisher.publish(event())
    wait_state(store, second, "sent")
    assert store.get_project("alpha").config_error is None


def test_an_unreadable_ca_file_fails_the_mail_as_configuration(runtime, store, worker, publisher, tls_ca, tmp_path):
    with SmtpPeer(security="tls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tmp_path / "missing-ca.pem", security="tls"))
        worker()
        event_id = publisher.publish(event())
        wait_until(lambda: (m := store.get_mail(event_id)) and m.attempts >= 1 and m.state in ("failed", "queued"))
        mail = store.get_mail(event_id)
        assert peer.messages == []
    assert mail.state == "failed" and mail.reason == "configuration" and "missing-ca.pem" in mail.detail


def test_record_mails_overtake_notifications_already_waiting(runtime, store, worker, publisher, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                  before_data_reply=lambda envelope: time.sleep(0.02)) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        worker(threads=1)
        publisher.publish_many([event(subject=f"n{i}") for i in range(120)])
        wait_until(lambda: len(peer.messages) >= 10)  # notifications are flowing, the rest wait
        for i in range(5):
            publisher.publish(event(kind="record", subject=f"r{i}"))
        sent_before = len(peer.messages)
        peer.wait_for(125, timeout=60)
        order = [m.message["Subject"] for m in peer.messages]
        positions = sorted(order.index(f"r{i}") for i in range(5))
        # Ahead of them go the transport messages the worker already holds (in progress or
        # prefetched, TRANSPORT_BATCH mails each, and a prefetched one may slip between two records
        # that travel alone), never the mass of notifications still waiting in the broker.
        assert len(order) - 1 - positions[-1] >= 120 - sent_before - 4 * TRANSPORT_BATCH, (sent_before, positions)


def test_a_mail_on_the_queue_of_a_service_its_project_left_is_rerouted_not_sent_there(runtime, store, worker,
                                                                                      peer, tls_ca, caplog):
    from deskmail.workers.app import enqueuer
    from deskmail.workers.constants import MailService
    caplog.set_level("INFO", logger="deskmail.workers.delivery")
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    ev = event()
    assert store.admit(ev | {"to": [{"address": "user@example.com"}]}, priority=1, recipients=1).state == "queued"
    broker = worker()
    enqueuer(broker)(MailService.EXCHANGE, [ev["event_id"]], 1)  # admitted while the project used Exchange
    mail = wait_state(store, ev["event_id"], "sent")
    assert mail.mail_service == "smtp" and len(peer.wait_for(1)) == 1
    assert "1 now go through another mail service" in caplog.text  # the Exchange actor handed it on
    assert len(store.attempts_of(ev["event_id"])) == 1
