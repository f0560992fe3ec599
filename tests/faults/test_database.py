"""The private PostgreSQL cluster broken under admission and under sending: backends terminated,
fast restart, immediate stop, and connections that go silent. Under every database fault a mail
the server accepted is never sent again: not even a flagged second copy is allowed here.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.conftest import WORKER_ENV
from tests.faults.ledger import judge
from tests.faults.traffic import Steady, events
from tests.peers.smtp import SmtpPeer
from tests.peers.tcpproxy import TcpProxy

N, PER_DAY = 40, 30
LEASE_AND_GRACE = float(WORKER_ENV["DESKMAIL_LEASE_SECONDS"]) + float(WORKER_ENV["DESKMAIL_TAKEOVER_GRACE"])
EXPECTED = "every confirmed event in one state; 0 extra copies; 30 sent, 10 backlog (per_day 30)"


class Fault:
    """A database fault, run `times` times; remembers when the database was last whole again."""

    def __init__(self, action, times: int = 1) -> None:  # noqa: ANN001
        self.action, self.times = action, times
        self.runs = 0
        self.ended: float | None = None
        self._lock = threading.Lock()

    def __call__(self, *_: object) -> None:
        with self._lock:
            if self.runs >= self.times:
                return
            self.runs += 1
        self.action()
        self.ended = time.monotonic()


def _terminate(pg, site):  # noqa: ANN001, ANN202
    return lambda: pg.terminate_backends(site.db_name)


def _restart_in_background(pg, fault_holder: list):  # noqa: ANN001, ANN202
    """Restart the cluster in a thread (the SMTP reply goes out meanwhile); ended is set once it is back."""
    def restart() -> None:
        pg.restart("fast")
        fault_holder[0].ended = time.monotonic()
    return lambda: threading.Thread(target=restart, daemon=True).start()


def _crash_in_background(pg, fault_holder: list, down: float = 3.0):  # noqa: ANN001, ANN202
    """Immediate stop now (a crash), start again `down` seconds later, in a thread."""
    def crash() -> None:
        pg.stop("immediate")
        time.sleep(down)
        pg.start()
        fault_holder[0].ended = time.monotonic()
    def begin() -> None:
        threading.Thread(target=crash, daemon=True).start()
        time.sleep(0.3)  # the reply leaves while the database is down
    return begin


def _mid_send(site, record, fault_name: str, make_fault, env: dict | None = None,  # noqa: ANN001, ANN202
              scheduler_env: dict | None = None, allow_flagged_duplicates: bool = False):
    holder: list = []
    fault = make_fault(holder)
    holder.append(fault)
    # every 4th final reply waits for the fault to be done (or under way) before it goes out
    calls = {"n": 0}

    def before_reply(_envelope: object) -> None:
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            fault()

    with SmtpPeer(before_data_reply=before_reply) as peer:
        site.project(peer, per_day=PER_DAY)
        site.worker(**(env or {}))
        site.scheduler(**(scheduler_env if scheduler_env is not None else env or {}))
        record(fault_name, EXPECTED if not allow_flagged_duplicates else EXPECTED.replace(
            "0 extra copies", "at most one flagged DATA-window copy"))
        ids = site.publisher.publish_many(events(N))
        _wait_ended(fault)
        verdict = judge(site.db_url, ids, lambda: peer.messages, timeout=120, per_day=PER_DAY,
                        fault_ended=fault.ended, allow_flagged_duplicates=allow_flagged_duplicates,
                        expect_states={"sent": PER_DAY, "backlog": N - PER_DAY})
        record.verdict(verdict, fault_runs=fault.runs)


def _mid_admission(site, record, fault_name: str, make_fault):  # noqa: ANN001, ANN202
    holder: list = []
    fault = make_fault(holder)
    holder.append(fault)
    with SmtpPeer() as peer:
        site.project(peer, per_day=PER_DAY)
        site.worker()
        site.scheduler()
        record(fault_name, EXPECTED)
        publishing = Steady(site.publisher, events(N), give_up_after=120, pause=0.05,
                            on_confirmed=lambda n: n in (10, 20, 30) and fault())
        publishing.start()
        publishing.join(150)
        _wait_ended(fault)
        verdict = judge(site.db_url, publishing.confirmed, lambda: peer.messages, timeout=120, per_day=PER_DAY,
                        fault_ended=fault.ended, allow_flagged_duplicates=False,
                        expect_states={"sent": PER_DAY, "backlog": N - PER_DAY})
        record.verdict(verdict, fault_runs=fault.runs, confirmed=len(publishing.confirmed))


def _wait_ended(fault: Fault, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while fault.ended is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fault.ended is not None, "the database fault never ran (or never ended)"


def test_backends_terminated_mid_admission(site, record, pg):
    _mid_admission(site, record, "pg_terminate_backend mid-admission (3 times)",
                   lambda holder: Fault(_terminate(pg, site), times=3))


def test_backends_terminated_mid_send_before_the_outcome_is_written(site, record, pg):
    _mid_send(site, record, "pg_terminate_backend mid-send, between DATA and the 250 (3 times)",
              lambda holder: Fault(_terminate(pg, site), times=3))


def test_fast_restart_mid_admission(site, record, pg):
    _mid_admission(site, record, "PostgreSQL fast restart mid-admission",
                   lambda holder: Fault(lambda: pg.restart("fast")))


def test_fast_restart_mid_send(site, record, pg):
    _mid_send(site, record, "PostgreSQL fast restart mid-send (the 250 arrives during it)",
              lambda holder: Fault(_restart_in_background(pg, holder)))


def test_immediate_stop_and_start_mid_admission(site, record, pg):
    def crash() -> None:
        pg.stop("immediate")
        time.sleep(3)
        pg.start()
    _mid_admission(site, record, "PostgreSQL immediate stop, 3 s down, start: mid-admission",
                   lambda holder: Fault(crash))


def test_immediate_stop_and_start_mid_send(site, record, pg):
    _mid_send(site, record, "PostgreSQL immediate stop, 3 s down, start: mid-send (the 250 arrives meanwhile)",
              lambda holder: Fault(_crash_in_background(pg, holder)))


class _Frozen(Fault):
    """Freezes the route once; `ended` is set when the route thaws, `frozen` seconds later."""

    def __init__(self, route: TcpProxy, frozen: float) -> None:
        super().__init__(self._freeze)
        self.route, self.frozen = route, frozen

    def _freeze(self) -> None:
        self.route.freeze()
        threading.Timer(self.frozen, self._thaw).start()
        time.sleep(0.2)  # the reply leaves while the route is silent

    def _thaw(self) -> None:
        self.route.thaw()
        self.ended = time.monotonic()

    def __call__(self, *_: object) -> None:
        with self._lock:
            if self.runs >= self.times:
                return
            self.runs += 1
        self.action()


@pytest.mark.parametrize("who, frozen", [("every process", 12.0), ("the workers only", 4.0),
                                         ("the workers only", 12.0)])
def test_silent_database_connections_mid_send(site, record, pg, who, frozen):
    """A route that goes silent. Only when the workers' route stays silent for longer than lease +
    takeover grace is the worker as good as dead to the others: then (and only then) a flagged
    DATA-window second copy is the honest outcome, as for a killed worker."""
    with TcpProxy("127.0.0.1", pg.port) as route:
        url = f"postgresql://postgres@127.0.0.1:{route.port}/{site.db_name}"
        env = {"DESKMAIL_DATABASE_URL": url}
        holder: list = []

        def make(_: list) -> Fault:
            holder.append(_Frozen(route, frozen))
            return holder[0]

        if who == "every process":
            _mid_send(site, record, f"silent database connections of {who} ({frozen:g} s, mid-send)", make, env=env)
        else:  # the scheduler keeps a healthy route
            within = frozen < LEASE_AND_GRACE
            _mid_send(site, record, f"silent database connections of {who} ({frozen:g} s, mid-send, "
                      f"{'within' if within else 'beyond'} lease + grace)", make, env=env, scheduler_env={},
                      allow_flagged_duplicates=not within)
