"""What the scheduler recovers, and what it must leave alone: dead letters, expired leases, live slow sends."""

from __future__ import annotations

import dataclasses
import threading
import time

import pika
import pytest

from deskmail.producers import control
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.admit import Admitter
from deskmail.workers.app import build_broker, enqueuer
from deskmail.workers.constants import MailService
from deskmail.workers.deadletters import ADMIT_DEAD_LETTERS, drain
from deskmail.workers.scheduler import Scheduler

WORKER = "dead-host:1"


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def admitted(store, **fields) -> dict:
    ev = event(**fields)
    assert store.admit(ev | {"to": [{"address": a} for a in ev["to"]]}, priority=1, recipients=len(ev["to"])).state \
        == "queued"
    return ev


def declared(conn: pika.BlockingConnection, queue: str) -> bool:
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False


def take_over_all(scheduler: Scheduler, expected: int, timeout: float = 15) -> None:
    """Tick until `expected` mails were taken over (lease expiry, then the grace)."""
    done = [0]
    wait_until(lambda: done.__setitem__(0, done[0] + scheduler.tick().get("taken_over", 0)) or done[0] >= expected,
               timeout=timeout, interval=0.2)


def test_undecodable_message_in_the_dead_letter_queue_is_kept_as_rejected(config, store, worker):
    worker()  # declares deskmail.admit and its XQ, in the background
    conn = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
    wait_until(lambda: declared(conn, ADMIT_DEAD_LETTERS))
    conn.channel().basic_publish("", ADMIT_DEAD_LETTERS, b"\xff not json at all")
    conn.close()
    broker = build_broker(config)
    assert drain(config.amqp_url, Admitter(store, enqueuer(broker))) == 1
    rejected = store.counts()["(none)"]
    assert rejected == {"rejected": 1}


def test_mail_of_a_worker_lost_before_data_is_sent_again_unflagged(config, runtime, store, worker, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    ev = admitted(store)
    assert store.claim([ev["event_id"]], WORKER, config.lease_seconds, "smtp")  # claimed, then the worker died
    scheduler = Scheduler(store, enqueuer(worker()), config)
    assert scheduler.tick()["taken_over"] == 0  # the lease has not expired yet
    take_over_all(scheduler, 1)
    wait_until(lambda: store.get_mail(ev["event_id"]).state == "sent")
    mail = store.get_mail(ev["event_id"])
    assert mail.takeovers == 1 and not mail.duplicate_risk and len(peer.wait_for(1)) == 1
    history = store.attempts_of(ev["event_id"])
    assert [(a.attempt, a.worker, a.outcome) for a in history][0] == (1, WORKER, "lost")
    assert history[1].outcome == "sent" and history[1].worker == runtime.worker


def test_mail_lost_inside_the_data_window_is_sent_again_flagged_then_ambiguous(config, runtime, store, worker,
                                                                               peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    ev = admitted(store)
    [claim] = store.claim([ev["event_id"]], WORKER, config.lease_seconds, "smtp")
    # the worker died after starting DATA
    assert store.record_and_enter([], [claim], WORKER) == (set(), {claim.event_id})
    scheduler = Scheduler(store, enqueuer(worker()), config)
    take_over_all(scheduler, 1)
    wait_until(lambda: store.get_mail(ev["event_id"]).state == "sent")
    mail = store.get_mail(ev["event_id"])
    assert mail.duplicate_risk and mail.takeovers == 1
    assert peer.wait_for(1)[0].message["Message-ID"] == mail.message_id

    second = admitted(store)
    idle = Scheduler(store, lambda *a: None, config)
    for _ in range(2):  # lost inside the DATA window twice: no third copy
        [claim] = store.claim([second["event_id"]], WORKER, config.lease_seconds, "smtp")
        assert store.record_and_enter([], [claim], WORKER)[1] == {claim.event_id}
        wait_until(lambda: idle.tick() is not None and store.get_mail(second["event_id"]).state != "sending",
                   timeout=15, interval=0.2)
    mail = store.get_mail(second["event_id"])
    assert mail.state == "ambiguous" and "may or may not" in mail.detail and mail.duplicate_risk


def test_a_live_worker_on_a_slow_server_keeps_its_lease_and_sends_once(config, runtime, store, worker, tls_ca):
    slow = 3 * (config.lease_seconds + config.takeover_grace)  # far past an unrenewed lease and its grace
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"},
                  before_data_reply=lambda envelope: time.sleep(slow)) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        broker = worker(cfg=dataclasses.replace(config, smtp_final_reply_timeout=slow * 2))
        scheduler = Scheduler(store, enqueuer(broker), config)
        stop = threading.Event()
        ticks = threading.Thread(target=lambda: [scheduler.tick() for _ in iter(lambda: stop.wait(0.3), True)])
        ticks.start()
        try:
            ev = admitted(store)
            enqueuer(broker)(MailService.SMTP, [ev["event_id"]], 1)
            wait_until(lambda: store.get_mail(ev["event_id"]).state == "sent", timeout=slow + 15)
        finally:
            stop.set()
            ticks.join()
        time.sleep(config.lease_seconds + config.takeover_grace)
        mail = store.get_mail(ev["event_id"])
        assert len(peer.messages) == 1 and mail.takeovers == 0 and not mail.duplicate_risk


def test_an_outcome_written_late_by_a_worker_whose_lease_was_taken_over_stops_the_second_send(config, store,
                                                                                           runtime, peer, tls_ca):
    from deskmail.workers.records import AttemptOutcome
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    ev = admitted(store)
    [claim] = store.claim([ev["event_id"]], WORKER, config.lease_seconds, "smtp")
    assert store.record_and_enter([], [claim], WORKER)[1] == {claim.event_id}
    take_over_all(Scheduler(store, lambda *a: None, config), 1)  # queued again, not yet claimed
    assert store.record_outcomes([(claim, AttemptOutcome("sent", "sent", "250 OK queued as 1"))], WORKER) \
        == {claim.event_id}
    mail = store.get_mail(ev["event_id"])
    assert mail.state == "sent" and store.claim([ev["event_id"]], "other:2", config.lease_seconds, "smtp") == []
    assert [a.outcome for a in store.attempts_of(ev["event_id"])] == ["sent"]


def test_a_mail_that_never_left_gives_its_quota_back(config, runtime, store, worker, publisher, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "right"}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="wrong", per_day=2))
        worker()
        ids = [publisher.publish(event()) for _ in range(2)]
        wait_until(lambda: all(store.get_mail(i) and store.get_mail(i).state == "failed" for i in ids))
        assert store.sent_today("alpha", "UTC") == 0 and store.get_project("alpha").config_error
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="right", per_day=2))
        after_fix = publisher.publish(event())
        wait_until(lambda: store.get_mail(after_fix) and store.get_mail(after_fix).state == "sent")
        assert store.sent_today("alpha", "UTC") == 1


def test_failed_mails_are_retried_and_ambiguous_ones_resent_or_closed_by_command(config, runtime, store, worker,
                                                                                 publisher, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "right"}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="wrong"))
        worker()
        failed = publisher.publish(event())
        wait_until(lambda: store.get_mail(failed) and store.get_mail(failed).state == "failed")
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password="right"))
        answer = control.send(publisher, store, control.control_message(
            "failed.retry", config.control_key, ids=[failed]), timeout=15)
        assert answer["ok"] and answer["outcomes"] == {failed: "resumed"}
        wait_until(lambda: store.get_mail(failed).state == "sent")
        assert store.sent_today("alpha", "UTC") == 1  # the retry took the unit the failure gave back

        ambiguous = [admitted(store)["event_id"] for _ in range(2)]
        with store.pool.connection() as conn:
            conn.execute("UPDATE mail SET state = 'ambiguous', reason = 'no_final_reply' WHERE event_id = ANY(%s)",
                         (ambiguous,))
        resend = control.send(publisher, store, control.control_message(
            "ambiguous.resend", config.control_key, ids=[ambiguous[0]]), timeout=15)
        close = control.send(publisher, store, control.control_message(
            "ambiguous.close", config.control_key, ids=[ambiguous[1], failed]), timeout=15)
        assert resend["outcomes"] == {ambiguous[0]: "resumed"}
        assert close["outcomes"] == {ambiguous[1]: "closed", failed: "not ambiguous (it is sent)"}
        wait_until(lambda: store.get_mail(ambiguous[0]).state == "sent")
        resent = store.get_mail(ambiguous[0])
        assert resent.duplicate_risk and resent.message_id == peer.messages[-1].message["Message-ID"]
        closed = store.get_mail(ambiguous[1])
        assert closed.state == "sent" and closed.reason == "closed_by_admin"
        assert store.sent_today("alpha", "UTC") == 3  # the two ambiguous mails kept their units, no new one
        actions = [e["action"] for e in store.audit()]
        assert {"failed.retry", "ambiguous.resend", "ambiguous.close"} <= set(actions)
