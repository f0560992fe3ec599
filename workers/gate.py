"""The DATA gate: before a mail is handed over, its DATA phase and the outcomes of the mails its
thread finished since the last one are written, under the lease, in one transaction.

Each sending thread waits for its own write, so the guarantee is the same as one transaction per
mail: a worker lost before a mail's DATA leaves it unmarked (safe to send again), one lost after it
leaves at most that mail and the ones finished since unwritten, each marked. What threads of one
process ask for at the same time is written together (group commit, leader and followers): while
one write is in flight the others queue, and the first of them writes all that queued in one round
trip and one commit. A single sender waits for no one; under load a commit carries many mails.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from deskmail.workers import metrics
from deskmail.workers.errors import DataRefused, StoreError, StoreUnavailable
from deskmail.workers.records import AttemptOutcome, Claim
from deskmail.workers.transports.base import Outcome, TransportFailure

Done = list[tuple[Claim, AttemptOutcome]]
MAX_GROUP = 64  # threads' writes in one transaction; a process runs far fewer sending threads
WAIT = 1.0  # seconds a queued thread waits at a time for the write in flight
log = logging.getLogger(__name__)


class GateStore(Protocol):
    """Store.record_and_enter (or a fake with its rules)."""

    def record_and_enter(self, done: Done, entering: Sequence[Claim],
                         worker: str) -> tuple[set[uuid.UUID], set[uuid.UUID]]: ...


@dataclass(eq=False)
class _Write:
    """One thread's request: its pending outcomes and the mail it is about to hand over."""

    done: Done
    claim: Claim
    recorded: set[uuid.UUID] = field(default_factory=set)
    held: bool = False
    error: StoreError | None = None
    finished: bool = False
    wake: threading.Event = field(default_factory=threading.Event)  # set when answered, or when it may lead

    def ids(self) -> set[uuid.UUID]:
        return {self.claim.event_id, *(c.event_id for c, _ in self.done)}

    def fail(self, error: StoreError) -> None:
        self.error, self.finished = error, True

    def answer(self) -> tuple[set[uuid.UUID], bool]:
        if self.error is not None:  # one instance per thread: threads do not share a traceback
            raise type(self.error)(*self.error.args) from self.error
        return self.recorded, self.held


class GroupWrites:
    """A process's DATA marks and outcomes, written in groups (one per store and worker identity)."""

    def __init__(self, store: GateStore, worker: str, max_group: int = MAX_GROUP) -> None:
        self.store, self.worker, self.max_group = store, worker, max_group
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._writing = False

    def record_and_enter(self, done: Done, claim: Claim) -> tuple[set[uuid.UUID], bool]:
        """Write done and mark claim's mail as entering DATA; the ids that took their outcome, and whether
        claim's lease still holds. Raises StoreError when PostgreSQL did not take the write."""
        write = _Write(list(done), claim)
        with self._lock:
            self._queue.append(write)
        try:
            while not self._lead_or_wait(write):
                write.wake.wait(WAIT)  # bounded, so that an exception raised in this thread lands
        except BaseException:  # this thread is stopped (a time limit, a shutdown): a write not taken never is
            with self._lock:
                if write in self._queue:
                    self._queue.remove(write)
                if not self._writing and self._queue:  # it may have been the one woken to lead next
                    self._queue[0].wake.set()
            raise
        return write.answer()

    def waiting(self) -> int:
        """How many threads' writes are queued behind the one in flight."""
        with self._lock:
            return len(self._queue)

    def _lead_or_wait(self, write: _Write) -> bool:
        """Whether write is answered: if no write is in flight, this thread writes the queue's next group
        (oldest first; its own may have to wait for the next one). Only the threads answered, and the next
        to lead, are woken: not the whole queue."""
        group: list[_Write] = []
        leading = False
        try:
            with self._lock:
                if write.finished:
                    return True
                if self._writing:
                    write.wake.clear()  # under the lock: a wake-up set after this is not missed
                    return False
                if write not in self._queue:  # neither queued nor answered: never left hanging
                    write.fail(StoreUnavailable("the DATA phase was not written: its group was lost"))
                    return True
                leading = self._writing = True
                group = self._take()
            self._write(group)
        finally:
            if leading:
                with self._lock:
                    for lost in (w for w in group if not w.finished):  # the leader was stopped mid-write
                        lost.fail(StoreUnavailable("the thread writing the DATA phase was stopped"))
                    self._queue = [w for w in self._queue if not w.finished]
                    self._writing = False
                    for answered in group:
                        answered.wake.set()
                    if self._queue:
                        self._queue[0].wake.set()
        return write.finished

    def _take(self) -> list[_Write]:
        """The queued writes that can share a transaction, oldest first: no mail in two of them (a stale
        outcome of a mail taken over, and its new holder's mark, never meet in one statement)."""
        group: list[_Write] = []
        taken: set[uuid.UUID] = set()
        for write in self._queue:
            if len(group) == self.max_group:
                break
            ids = write.ids()
            if taken.isdisjoint(ids):
                group.append(write)
                taken |= ids
        self._queue = [w for w in self._queue if w not in group]
        return group

    def _write(self, group: list[_Write]) -> None:
        """One transaction for the group; when PostgreSQL refuses its data, each write alone, so that one
        bad outcome fails only its own thread's mail."""
        try:
            recorded, entered = self.store.record_and_enter([d for w in group for d in w.done],
                                                            [w.claim for w in group], self.worker)
        except DataRefused as exc:
            if len(group) == 1:
                group[0].fail(exc)
            else:
                for write in group:
                    self._write([write])
            return
        except StoreError as exc:
            for write in group:
                write.fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the group's threads waiting
            log.exception("writing the DATA phase of %d mail(s) failed", len(group))
            for write in group:
                write.fail(StoreError(f"the DATA phase was not written: {type(exc).__name__}"))
            return
        metrics.data_group_written(len(group))
        for write in group:
            write.recorded = {c.event_id for c, _ in write.done} & recorded
            write.held, write.finished = write.claim.event_id in entered, True


class DataGate:
    """One batch's DATA phases and outcomes in a sending thread: before each mail is handed over, the
    outcomes of the mails finished since the last one are written and this mail is marked as entering
    the DATA window (through the process's GroupWrites)."""

    def __init__(self, writes: GroupWrites,
                 recorded: Callable[[Done, set[uuid.UUID]], None]) -> None:
        self.writes, self.recorded = writes, recorded
        self._pending: Done = []
        self._entered: set[uuid.UUID] = set()

    def enter(self, claim: Claim) -> None:
        """Let claim's mail be handed over, or raise TransportFailure (lease lost, database unreachable)."""
        try:
            taken, held = self.writes.record_and_enter(self._pending, claim)
        except StoreError as exc:  # the outcomes stay pending; this mail is not sent now
            raise TransportFailure(Outcome.TRANSIENT, f"not sent: PostgreSQL did not record the DATA phase ({exc})") \
                from exc
        done, self._pending = self._pending, []
        self.recorded(done, taken)
        if not held:
            raise TransportFailure(Outcome.TRANSIENT, "not sent: this worker's lease was taken over before DATA")
        self._entered.add(claim.event_id)

    def entered(self, claim: Claim) -> bool:
        """Whether claim's mail may have been handed over."""
        return claim.event_id in self._entered

    def finished(self, claim: Claim, outcome: AttemptOutcome) -> None:
        """Keep claim's outcome to be written with the next DATA phase, or at the end."""
        self._pending.append((claim, outcome))

    def unwritten(self) -> Done:
        """The outcomes not written yet."""
        return self._pending
