"""The control actor's bookkeeping against the real store: once per request id, refusals kept apart."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from deskmail.producers.control import control_message
from tests.integration.test_cli import deskmail
from deskmail.workers.control import Controller, sign

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
KEY = "k3y-for-the-bookkeeping-tests"


def controller(store, clock=lambda: NOW) -> Controller:
    return Controller(store, KEY, max_age=600, enqueue=lambda *a: None, clock=clock)


def signed(action: str = "project.pause", key: str = KEY, requested_at: str | None = None, **fields) -> dict:
    message = control_message(action, "", **({"project": "alpha"} | fields))
    message["requested_at"] = requested_at or NOW.isoformat()
    message["signature"] = sign(message, key)
    return message


def audit_of(store, request_id: str) -> list[dict]:
    return [r for r in store.audit(limit=1000) if r["params"].get("request_id") == request_id]


@pytest.fixture
def alpha(store):
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO projects (key) VALUES ('alpha')")
    return "alpha"


def test_the_same_signed_message_delivered_four_times_at_once_is_applied_once(store, alpha):
    def deliver(start: threading.Barrier, message: dict, errors: list[BaseException]) -> None:
        start.wait()
        try:
            controller(store)(message)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(5):  # several rounds: a check outside the transaction loses at least one of them
        message = signed("limits.set", per_day=7)
        start = threading.Barrier(4)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=deliver, args=(start, message, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(audit_of(store, message["request_id"])) == 1
        assert store.control_answer(message["request_id"])["ok"]


def test_a_forged_message_does_not_take_the_request_id_of_the_real_one(store, alpha):
    real = signed()
    forged = dict(real, signature="0" * 64)
    controller(store)(forged)
    assert store.control_answer(real["request_id"]) is None
    assert "signature" in store.control_refusal(real["request_id"])
    assert store.get_project("alpha").paused_reason is None
    controller(store)(real)
    assert store.control_answer(real["request_id"])["ok"]
    assert store.get_project("alpha").paused_reason == "admin"
    refused, applied = sorted(audit_of(store, real["request_id"]), key=lambda r: r["id"])
    assert refused["result"]["refused"] and applied["result"]["ok"]


def test_an_expired_message_does_not_take_its_request_id_either(store, alpha):
    old = signed(requested_at=(NOW - timedelta(hours=2)).isoformat())
    controller(store)(old)
    assert "expired" in store.control_refusal(old["request_id"])
    fresh = signed(request_id=old["request_id"])
    controller(store)(fresh)
    assert store.control_answer(old["request_id"])["ok"]


@pytest.mark.parametrize("stamp, now", [
    ("2026-11-24t10:00:00z", NOW),
    ("2026-12-31T23:59:60Z", datetime(2027, 1, 1, tzinfo=timezone.utc)),
    ("2026-11-24T11:00:00.5+01:00", NOW),
    ("9999-12-31T23:59:60Z", NOW),
])
def test_any_requested_at_the_schema_accepts_gets_an_answer_and_never_raises(store, alpha, stamp, now):
    message = signed(requested_at=stamp)
    controller(store, clock=lambda: now)(message)
    answered = store.control_answer(message["request_id"]) or {"refused": store.control_refusal(message["request_id"])}
    assert answered.get("ok") or "requested_at" in answered["refused"]


def test_a_malformed_message_is_refused_with_the_field_named(store, alpha):
    message = signed()
    del message["project"]
    message["signature"] = sign(message, KEY)
    controller(store)(message)
    assert "project" in store.control_refusal(message["request_id"])
    assert store.get_project("alpha").paused_reason is None


def test_a_message_that_is_not_one_object_is_refused_and_audited(store):
    controller(store)("not", "an", "object")
    (entry,) = store.audit()
    assert entry["result"]["refused"] and "exactly one object" in entry["result"]["error"]


def test_audit_shows_attacker_written_text_escaped(config, store, alpha):
    forged = signed(key="wrong", requested_by="root\x1b[2J\x1b[H\r\n2026-11-24 10:00:00  admin  limits.set\x07")
    controller(store)(forged)
    shown = deskmail(config, "audit")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "\r" not in shown.stdout
    assert len(shown.stdout.strip().splitlines()) == 3  # the header, its rule and one row: no forged lines
    assert "root\\x1b[2J\\x1b[H\\r\\n2026-11-24" in shown.stdout
