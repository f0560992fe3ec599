"""Bad input is kept within bounds and never sent: excerpts, capped problem lists, refused envelopes."""

from __future__ import annotations

import json
import time
import uuid

import pika

from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.admit import Admitter
from deskmail.workers.deadletters import ADMIT_DEAD_LETTERS, PARKED, drain


def envelope(args: list, **changes) -> bytes:
    body = {"queue_name": "deskmail.admit", "actor_name": "deskmail.admit", "args": args, "kwargs": {},
            "options": {}, "message_id": str(uuid.uuid4()), "message_timestamp": int(time.time() * 1000)}
    return json.dumps({**body, **changes}).encode()


def rejected(store) -> list[dict]:
    with store.pool.connection() as conn:
        return conn.execute("SELECT event_id, reason, detail, raw, raw_size, event FROM mail WHERE state = 'rejected' "
                            "ORDER BY seq").fetchall()


def drain_all(config, store) -> int:
    return drain(config.amqp_url, Admitter(store, lambda *a: None))


def test_a_huge_rejected_event_keeps_an_8_kib_excerpt_and_its_size(store, worker, publisher):
    worker()
    bad = event(to=["not-an-address"], text="x" * 1_000_000)
    publisher.publish_raw(envelope([bad]), bad["event_id"], 1, "deskmail.admit")
    (row,) = wait_until(lambda: rejected(store))
    assert str(row["event_id"]) == bad["event_id"] and "to[0]" in row["detail"]
    assert len(row["raw"]) < 8_300 and row["raw_size"] > 1_000_000 and row["event"] is None


def test_a_list_of_thousands_of_problems_is_capped_with_a_count(store, worker, publisher):
    worker()
    bad = {**event(), **{f"unknown_{i}": 1 for i in range(5_000)}}
    publisher.publish_raw(envelope([bad]), bad["event_id"], 1, "deskmail.admit")
    (row,) = wait_until(lambda: rejected(store))
    assert row["detail"].endswith("... and 4,980 more problems") and len(row["detail"]) < 4_001


def test_envelopes_dramatiq_refuses_come_back_rejected_with_the_reason_and_are_never_sent(runtime, store, worker,
                                                                                         publisher):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
        worker()
        good = event()
        extra_key = envelope([event()], evil="1")
        unknown_actor = envelope([event()], actor_name="deskmail.nope")
        for body in (extra_key, unknown_actor):
            publisher.publish_raw(body, str(uuid.uuid4()), 1, "deskmail.admit")
        bad_options = envelope([event()], options={"time_limit": "soon"})
        publisher.publish_raw(bad_options, str(uuid.uuid4()), 1, ADMIT_DEAD_LETTERS)
        publisher.publish(good)
        wait_until(lambda: store.get_mail(good["event_id"]) and store.get_mail(good["event_id"]).state == "sent")
        wait_until(lambda: drain_all(runtime.config, store) or len(rejected(store)) == 3, timeout=30)
        reasons = sorted(r["detail"] for r in rejected(store))
        assert len(reasons) == 3 and all(r["reason"] == "invalid_envelope" for r in rejected(store))
        assert any("unknown key(s) 'evil'" in r for r in reasons) and any("deskmail.nope" in r for r in reasons)
        assert any("options.time_limit" in r for r in reasons)
        time.sleep(0.5)
        assert len(peer.messages) == 1  # only the good one


def test_each_distinct_bad_message_gets_its_own_row_and_a_redelivery_finds_it(config, store, worker, publisher):
    worker()
    first, second = envelope([]), envelope([])  # alike but for their message ids
    for body in (first, second, first):
        publisher.publish_raw(body, str(uuid.uuid4()), 1, ADMIT_DEAD_LETTERS)
    assert drain_all(config, store) == 3
    assert len(rejected(store)) == 2
    publisher.publish_raw(envelope([], evil=1), str(uuid.uuid4()), 1, "deskmail.admit")
    publisher.publish_raw(envelope([], evil=2), str(uuid.uuid4()), 1, "deskmail.admit")
    wait_until(lambda: drain_all(config, store) or len(rejected(store)) == 4)


class FaultyAdmitter(Admitter):
    """An admitter with a bug for one event: what the drain must survive (no real peer has such a bug)."""

    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], dict) and args[0].get("subject") == "triggers the bug":
            raise RuntimeError("a bug in handling this event")
        return super().__call__(*args, **kwargs)


def test_a_dead_letter_that_cannot_be_handled_is_parked_and_the_drain_goes_on(config, store, worker, publisher):
    worker()
    poison, after = envelope([event(subject="triggers the bug")]), envelope([event(to=["nobody"])])
    publisher.publish_raw(poison, str(uuid.uuid4()), 1, ADMIT_DEAD_LETTERS)
    publisher.publish_raw(after, str(uuid.uuid4()), 1, ADMIT_DEAD_LETTERS)
    assert drain(config.amqp_url, FaultyAdmitter(store, lambda *a: None)) == 2
    (row,) = rejected(store)
    assert "to[0]" in row["detail"]  # the dead letter after the faulty one was still handled
    connection = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
    try:
        method, _props, body = connection.channel().basic_get(PARKED, auto_ack=True)
        assert body == poison
        declared = connection.channel().queue_declare(PARKED, durable=True, passive=True)
        assert declared.method.message_count == 0 and "x-message-ttl" not in str(declared)
    finally:
        connection.close()
