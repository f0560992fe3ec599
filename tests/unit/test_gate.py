"""The DATA gate's group commit: what threads ask for at once is written together, each thread learns only
its own answer, and a fault reaches exactly the threads it concerns."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Sequence

from deskmail.workers.errors import DataRefused, StoreUnavailable
from deskmail.workers.gate import Done, GroupWrites
from deskmail.workers.records import AttemptOutcome, Claim
from deskmail.workers.constants import State

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def claim(event_id: uuid.UUID | None = None) -> Claim:
    event_id = event_id or uuid.uuid4()
    return Claim(event_id, "alpha", "notification", 1, {"event_id": str(event_id)}, "<m@x>", 1, uuid.uuid4(), NOW,
                 NOW, None, "alpha", 1)


SENT = AttemptOutcome("sent", State.SENT, "250 ok")


class GateStore:
    """Store.record_and_enter's rules (a lease held unless listed as lost), with a gate to hold a write."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[uuid.UUID], list[uuid.UUID]]] = []
        self.lost: set[uuid.UUID] = set()
        self.refused: set[uuid.UUID] = set()  # outcomes PostgreSQL refuses (DataRefused)
        self.down = False
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()

    def record_and_enter(self, done: Done, entering: Sequence[Claim],
                         worker: str) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        self.writing.set()
        self.hold.wait(10)
        outcomes, marks = [c.event_id for c, _ in done], [c.event_id for c in entering]
        self.calls.append((outcomes, marks))
        if self.down:
            raise StoreUnavailable("PostgreSQL: OperationalError: server closed the connection unexpectedly")
        if self.refused & {*outcomes, *marks}:
            raise DataRefused("PostgreSQL refused the data: invalid byte sequence")
        return set(outcomes), {m for m in marks if m not in self.lost}


def in_threads(writes: GroupWrites, requests: list[tuple[Done, Claim]]) -> list[object]:
    """Each request from its own thread; each thread's answer (or exception), in request order."""
    answers: list[object] = [None] * len(requests)

    def run(i: int) -> None:
        try:
            answers[i] = writes.record_and_enter(*requests[i])
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            answers[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a thread is still waiting for its write"
    return answers


def queued_behind_a_write(store: GateStore, writes: GroupWrites, requests: list[tuple[Done, Claim]]) -> list[object]:
    """Start one write and hold it in PostgreSQL while `requests` queue up behind it, then let all go."""
    first = claim()
    store.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(in_threads, writes, [([], first)])
        assert store.writing.wait(5)
        queued = pool.submit(in_threads, writes, requests)
        deadline = time.monotonic() + 5
        while writes.waiting() < len(requests):
            assert time.monotonic() < deadline, "the requests did not queue behind the write in flight"
            time.sleep(0.01)
        store.hold.set()
        leader.result(15)
        answers = queued.result(15)
    assert store.calls[0] == ([], [first.event_id])
    assert len(answers) == len(requests)
    return answers


def test_a_single_sender_writes_at_once_and_alone() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1")
    done, next_mail = [(claim(), SENT)], claim()
    assert writes.record_and_enter(done, next_mail) == ({done[0][0].event_id}, True)
    assert store.calls == [([done[0][0].event_id], [next_mail.event_id])]


def test_writes_queued_behind_one_in_flight_go_in_one_transaction_each_with_its_own_answer() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1")
    requests = [([(claim(), SENT)], claim()) for _ in range(5)]
    store.lost.add(requests[2][1].event_id)  # this thread's lease was taken over
    answers = queued_behind_a_write(store, writes, requests)
    assert len(store.calls) == 2  # the held write, then the five together
    outcomes, marks = store.calls[1]
    assert sorted(marks) == sorted(c.event_id for _, c in requests)
    assert sorted(outcomes) == sorted(d[0][0].event_id for d, _ in requests)
    for (done, _), answer, held in zip(requests, answers, [True, True, False, True, True]):
        assert answer == ({done[0][0].event_id}, held)


def test_a_mail_never_meets_its_own_stale_outcome_in_one_statement() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1")
    taken_over = claim()
    stale = ([(taken_over, SENT)], claim())  # the lease of taken_over was lost: its old outcome is late
    retaken = ([], claim(taken_over.event_id))  # and another thread of this process has it now
    answers = queued_behind_a_write(store, writes, [stale, retaken])
    assert store.calls[1:] == [([taken_over.event_id], [stale[1].event_id]), ([], [taken_over.event_id])]
    assert answers == [({taken_over.event_id}, True), (set(), True)]


def test_data_postgresql_refuses_fails_only_the_thread_it_belongs_to() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1")
    requests = [([(claim(), SENT)], claim()) for _ in range(3)]
    store.refused.add(requests[1][0][0][0].event_id)
    answers = queued_behind_a_write(store, writes, requests)
    assert isinstance(answers[1], DataRefused)
    assert answers[0] == ({requests[0][0][0][0].event_id}, True)
    assert answers[2] == ({requests[2][0][0][0].event_id}, True)


def test_an_unreachable_database_fails_every_thread_of_the_group_and_none_hangs() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1")
    requests = [([(claim(), SENT)], claim()) for _ in range(4)]
    store.down = True
    answers = queued_behind_a_write(store, writes, requests)
    assert all(isinstance(a, StoreUnavailable) for a in answers)
    store.down = False
    assert writes.record_and_enter(*requests[0]) == ({requests[0][0][0][0].event_id}, True)  # and it goes on


def test_a_group_is_capped() -> None:
    store = GateStore()
    writes = GroupWrites(store, "host:1", max_group=2)
    requests = [([], claim()) for _ in range(5)]
    queued_behind_a_write(store, writes, requests)
    assert [len(marks) for _, marks in store.calls[1:]] == [2, 2, 1]


def test_a_thread_stopped_while_writing_leaves_the_others_an_error_not_a_hang() -> None:
    class Stopped(BaseException):
        """What Dramatiq raises in a worker thread to stop it (a time limit, a shutdown)."""

    class StoppingStore(GateStore):
        def record_and_enter(self, done, entering, worker):  # noqa: ANN001, ANN201
            if len(self.calls) == 1:  # the group after the held write
                self.calls.append(([], [c.event_id for c in entering]))
                raise Stopped()
            return super().record_and_enter(done, entering, worker)

    store = StoppingStore()
    writes = GroupWrites(store, "host:1")
    answers = queued_behind_a_write(store, writes, [([], claim()) for _ in range(2)])
    assert sorted(type(a).__name__ for a in answers) == ["Stopped", "StoreUnavailable"]
    later = claim()
    assert in_threads(writes, [([], later)]) == [(set(), True)]  # and the next write is not kept waiting


def test_a_thread_stopped_while_its_group_is_written_one_by_one_leaves_no_one_waiting() -> None:
    class Stopped(BaseException):
        """What Dramatiq raises in a worker thread to stop it."""

    class StoppingStore(GateStore):
        def record_and_enter(self, done, entering, worker):  # noqa: ANN001, ANN201
            if len(self.calls) == 2:  # the group was refused; the first write alone is where it stops
                self.calls.append(([], [c.event_id for c in entering]))
                raise Stopped()
            return super().record_and_enter(done, entering, worker)

    store = StoppingStore()
    writes = GroupWrites(store, "host:1")
    requests = [([(claim(), SENT)], claim()) for _ in range(3)]
    store.refused.add(requests[2][0][0][0].event_id)
    answers = queued_behind_a_write(store, writes, requests)
    assert sorted(type(a).__name__ for a in answers) == ["Stopped", "StoreUnavailable", "StoreUnavailable"]
