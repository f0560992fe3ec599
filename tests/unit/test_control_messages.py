"""The control actor's gatekeeping: signature, expiry, idempotency, with an in-memory store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from producers.control import control_message
from workers.control import Controller

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


class FakeStore:
    """Records answers and pause calls; the slice of the store the controller needs here."""

    def __init__(self) -> None:
        self.answers: dict[str, dict] = {}
        self.paused: list[str] = []

    def control_answer(self, request_id: str):
        return self.answers.get(request_id)

    def record_control(self, message: dict, answer: dict) -> None:
        self.answers[message["request_id"]] = answer

    def get_project(self, key: str):
        return object()

    def set_pause(self, project: str, reason):
        self.paused.append(project)
        return True


def controller(store: FakeStore, key: str = "k3y") -> Controller:
    return Controller(store, key, max_age=600, hand_on=lambda: 0, clock=lambda: NOW)


def message(key: str = "k3y", **fields):
    m = control_message("project.pause", key, project="alpha", **fields)
    m["requested_at"] = NOW.isoformat()
    if key:
        from workers.control import sign
        m["signature"] = sign(m, key)
    return m


def test_a_signed_fresh_command_is_applied_once_even_if_delivered_twice():
    store = FakeStore()
    m = message()
    controller(store)(m)
    controller(store)(m)
    assert store.paused == ["alpha"] and store.answers[m["request_id"]]["ok"]


def test_a_wrong_signature_is_refused_and_answered():
    store = FakeStore()
    m = message()
    m["signature"] = "0" * 64
    controller(store)(m)
    assert store.paused == [] and "signature" in store.answers[m["request_id"]]["error"]


def test_an_old_command_expires_unapplied():
    store = FakeStore()
    m = message(key="")
    m["requested_at"] = (NOW - timedelta(hours=2)).isoformat()
    controller(store, key="")(m)
    assert store.paused == [] and "expired" in store.answers[m["request_id"]]["error"]


def test_a_malformed_command_names_the_field():
    store = FakeStore()
    m = message(key="")
    del m["project"]
    controller(store, key="")(m)
    assert store.paused == [] and "project" in store.answers[m["request_id"]]["error"]
