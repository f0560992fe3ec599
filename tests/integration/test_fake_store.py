"""The in-memory store of the unit tests keeps the real Store's rules: each scenario runs against PostgreSQL
and against tests/unit/fakes.FakeStore, through the real admit, control and transport callables, and both
must show the same states, reasons, details, counts, limits, answers and attempt histories."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from deskmail.producers.control import control_message
from deskmail.workers.admit import Admitter
from deskmail.workers.constants import Kind
from deskmail.workers.control import Controller
from deskmail.workers.store import Store, open_pool
from deskmail.workers.transports.base import Delivered, Outcome, TransportFailure
from tests.conftest import TABLES
from tests.unit.fakes import Before, Clock, FakeStore, FakeTransport, Handed, configure, deliverer, event, failure

KEY = "contract-control-key"
LEASE = 2.0  # the shortest lease a worker takes


@pytest.fixture
def real_store(database_url: str) -> Iterator[Store]:
    """The real Store on an emptied test database (PostgreSQL only: no broker needed)."""
    pool = open_pool(database_url, 4)
    with pool.connection() as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES))
        conn.execute("UPDATE global_limits SET per_day = NULL, recipients_per_mail = NULL, time_zone = 'UTC'")
    yield Store(pool)
    pool.close()


def assert_alike(real: dict, fake: dict) -> None:
    """Each part of what the fake showed equals what PostgreSQL showed; a difference names the part and mail."""
    for part, shown in real.items():
        for key in shown if isinstance(shown, dict) else ():
            assert fake[part].get(key) == shown[key], f"{part}[{key!r}]: the fake differs from PostgreSQL"
        assert fake[part] == shown, f"{part}: the fake differs from PostgreSQL"


def both(real_store: Store, scenario: Callable[..., dict]) -> tuple[dict, dict]:
    """What the scenario observed on PostgreSQL, and on the fake (on the real time, as PostgreSQL's now()).

    A scenario that must let time pass gets `wait(seconds)`: a sleep with PostgreSQL, a step of the fake's clock.
    """
    fake = FakeStore(Clock(None))
    return scenario(real_store, wait=time.sleep), scenario(fake, wait=fake.clock.advance)


class Labels:
    """Event ids by the scenario's names for them, so that two runs (with their own ids) compare."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def event(self, name: str, project: str = "alpha", **fields: Any) -> dict:
        body = event(project, **fields)
        self.names[body["event_id"]] = name
        return body

    def id(self, name: str) -> str:
        return next(i for i, n in self.names.items() if n == name)

    def named(self, value: Any) -> Any:
        """value with every event id (as text or UUID, key or item) replaced by its name."""
        if isinstance(value, dict):
            return {self.named(k): self.named(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.named(v) for v in value]
        if isinstance(value, uuid.UUID):
            return self.names.get(str(value), "?")
        return self.names.get(value, value) if isinstance(value, str) else value


def ledger(store: Any, labels: Labels) -> dict[str, tuple]:
    """Each named mail as the ledger shows it (no timestamps)."""
    out = {}
    for event_id, name in labels.names.items():
        m = store.get_mail(event_id)
        out[name] = None if m is None else (
            m.state, m.reason, m.detail, m.mail_service, m.attempts, m.takeovers, m.duplicate_risk, m.phase,
            m.refused, m.message_id is not None, m.next_attempt_at is not None, m.lease_until is not None,
            [(a.attempt, a.outcome, a.detail, a.phase) for a in store.attempts_of(event_id)])
    return out


def quota(store: Any, *projects: str) -> dict[str, Any]:
    """Today's units per scope and each project's pause, limits and configuration error."""
    out: dict[str, Any] = {"*": store.sent_today("*", "UTC")}
    for key in projects:
        p = store.get_project(key)
        out[key] = (store.sent_today(key, p.time_zone), p.paused_reason, p.per_day, p.recipients_per_mail,
                    p.config_error, p.auto_resume, p.mail_service, p.settings_version) if p else None
    return out


def handed(store: Any, labels: Labels, handed: Handed) -> list:
    return sorted((str(service), priority, sorted(labels.named(ids))) for service, ids, priority in handed.messages)


def admission(store: Any, wait: Callable[[float], None]) -> dict:
    labels, to_broker = Labels(), Handed()
    configure(store, "alpha", per_day=3, recipients=3)
    configure(store, "beta")
    configure(store, "gamma", time_zone="Pacific/Kiritimati")
    store.set_pause("gamma", "admin")
    store.set_global_limits(per_day=6, recipients_per_mail=5)
    admit = Admitter(store, to_broker)
    four = ("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    first = labels.event("a1")
    for body in [first, labels.event("a2", to=four[:3]), labels.event("big", to=four), dict(first), labels.event("a3"),
                 labels.event("a4"), labels.event("a5"), labels.event("g1", "gamma"), labels.event("x1", "nowhere")]:
        admit(body)
    admit([labels.event(f"b{i}", "beta", kind=Kind.RECORD if i == 2 else Kind.NOTIFICATION) for i in range(5)]
          + [dict(first), {**labels.event("bad"), "subject": None}])
    configure(store, "default", service="exchange")
    admit(labels.event("x2", "elsewhere"))
    return {"ledger": ledger(store, labels), "quota": quota(store, "alpha", "beta", "gamma", "elsewhere"),
            "handed": handed(store, labels, to_broker),
            "counts": {p: store.project_counts(p) for p in ("alpha", "beta", "gamma", "nowhere", "elsewhere")}}


def test_admission_decides_alike(real_store):
    assert_alike(*both(real_store, admission))


def mixed_batches(seed: int) -> Callable[[Any, Callable[[float], None]], dict]:
    """Batches of events of several projects (some paused, some unknown, one without a counter of its own),
    each under its own day limit and recipients cap and all under a global one, with repeats inside a batch
    and across batches: each batch's decisions are taken in one call, the fake's one event after another."""
    def scenario(store: Any, wait: Callable[[float], None]) -> dict:
        rng, labels, to_broker = random.Random(seed), Labels(), Handed()
        configure(store, "alpha", per_day=rng.randint(2, 9), recipients=rng.choice([None, 2, 3]))
        configure(store, "beta", per_day=rng.randint(2, 9))
        configure(store, "gamma", recipients=rng.choice([None, 1]), time_zone="Pacific/Kiritimati")
        configure(store, "delta", per_day=rng.randint(1, 3))
        store.set_pause("delta", "admin")
        store.set_global_limits(per_day=rng.randint(6, 14), recipients_per_mail=rng.choice([None, 3]))
        admit, sent, projects = Admitter(store, to_broker), [], ("alpha", "beta", "gamma", "delta", "nowhere")
        people = tuple(f"{n}@example.com" for n in "abcd")
        for number in range(rng.randint(5, 8)):
            if number == 3:
                configure(store, "default", service="exchange")  # from here on unknown projects send through it
            batch = []
            for _ in range(rng.randint(1, 14)):
                if sent and rng.random() < 0.15:
                    batch.append(dict(rng.choice(sent)))  # a repeat, of this batch or an earlier one
                    continue
                name = f"e{len(labels.names)}"
                body = labels.event(name, rng.choice(projects), to=people[:rng.randint(1, 4)],
                                    kind=Kind.RECORD if rng.random() < 0.2 else Kind.NOTIFICATION)
                batch.append(body)
                sent.append(body)
            rng.shuffle(batch)
            admit(batch)
        return {"ledger": ledger(store, labels), "quota": quota(store, *projects, "default"),
                "handed": handed(store, labels, to_broker),
                "counts": {p: store.project_counts(p) for p in projects}}
    return scenario


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
def test_batches_of_several_projects_are_decided_as_one_event_after_another(real_store, seed):
    assert_alike(*both(real_store, mixed_batches(seed)))


def test_the_mixed_batches_reach_every_decision():
    """Else the comparison above would hold for want of the cases (checked on the fake: no database needed)."""
    reasons: set = set()
    for seed in SEEDS:
        fake = FakeStore(Clock(None))
        reasons |= {(shown[0], shown[1]) for shown in mixed_batches(seed)(fake, fake.clock.advance)["ledger"].values()}
    assert reasons >= {("queued", None), ("backlog", "daily_limit"), ("backlog", "global_daily_limit"),
                       ("backlog", "project_paused"), ("backlog", "too_many_recipients"),
                       ("rejected", "unknown_project")}


def control(store: Any, wait: Callable[[float], None]) -> dict:
    labels, to_broker, answers = Labels(), Handed(), []
    configure(store, "alpha", per_day=1)
    configure(store, "beta", per_day=1)
    configure(store, "gamma", per_day=1, time_zone="America/Los_Angeles")
    admit = Admitter(store, Handed())
    for i in range(7):
        admit(labels.event(f"a{i}", kind=Kind.RECORD if i in (3, 5) else Kind.NOTIFICATION))
    for i in range(5):
        admit(labels.event(f"g{i}", "gamma", kind=Kind.RECORD if i == 4 else Kind.NOTIFICATION))
    admit([labels.event("b0", "beta"), labels.event("b1", "beta", to=("x@example.com", "y@example.com"))])

    def command(action: str, batch: int = 5000, **fields: Any) -> None:
        message = control_message(action, KEY, **fields)
        Controller(store, KEY, 600, to_broker, batch=batch)(message)
        answer = dict(store.control_answer(message["request_id"]) or {})
        answer.pop("through_seq", None)  # the ledger's own numbering: PostgreSQL's sequence leaves gaps
        answer.pop("accepted_at", None)  # each store's clock
        answers.append((action, labels.named(answer)))
    unknown = str(uuid.UUID(int=7))
    command("backlog.resume", ids=[labels.id("a1"), labels.id("a0"), unknown, labels.id("b1")], project="alpha")
    command("backlog.suspend", ids=[labels.id("a2"), labels.id("a3")])
    command("backlog.suspend", all=True, project="alpha", batch=2)
    command("suspended.resume", ids=[labels.id("a3"), labels.id("a4")], project="alpha")
    command("suspended.resume", all=True, batch=2, with_ids=True)
    command("project.pause", project="alpha")
    command("limits.set", project="beta", per_day=3, recipients_per_mail=1)
    command("auto_resume.set", project="beta", enabled=True)
    command("limits.set", project="nobody", per_day=3)
    command("backlog.resume", all=True, project="beta")
    command("auto_resume.set", project="gamma", enabled=True)
    command("limits.set", project="gamma", per_day=3)
    store.set_global_limits(per_day=store.sent_today("*", "UTC") + 1)
    command("limits.set", project="gamma", per_day=10)
    return {"answers": answers, "ledger": ledger(store, labels), "quota": quota(store, "alpha", "beta", "gamma"),
            "handed": handed(store, labels, to_broker),
            "audit": [(a["action"], a["project"], a["touched"]) for a in store.audit()]}


def test_control_actions_answer_and_move_alike(real_store):
    assert_alike(*both(real_store, control))


def delivery(store: Any, wait: Callable[[float], None]) -> dict:
    labels, seen = Labels(), {}
    configure(store, "alpha", per_day=20)
    two = ("a@example.com", "b@example.com")
    names = ("sent", "retry", "not due", "failed", "ambiguous", "configuration", "partial", "during", "late", "before",
             "closed", "quota")
    Admitter(store, Handed())([labels.event(n, to=two) for n in names])

    def send(name: str, *answers: Any, **options: Any) -> FakeTransport:
        transport = FakeTransport(*answers, on_connect=options.pop("on_connect", None),
                                  on_data=options.pop("on_data", None))
        deliverer(store, transport, clock=Clock(None), retry_base=0, **options)([labels.id(name)])
        return transport

    def take_over() -> None:  # the lease runs out; the scheduler's two passes mark it, then take the mail over
        wait(LEASE + 0.1)
        store.take_over(0)
        store.take_over(0)

    send("sent", Delivered("250 2.0.0 queued as 1"))
    send("retry", failure("transient"))
    send("not due", TransportFailure(Outcome.TRANSIENT, "421 4.7.0 come back in an hour", retry_after=3600))
    seen["not due sent again"] = len(send("not due").envelopes)
    send("failed", failure("permanent"))
    send("ambiguous", failure("ambiguous"))
    send("closed", failure("ambiguous"))
    send("configuration", failure("configuration"))
    seen["after configuration"] = quota(store, "alpha")
    send("partial", Delivered("250 OK", deferred={"b@example.com": "452 4.2.2 mailbox full"}))
    store.take_due_retries()
    seen["partial retry to"] = send("partial", failure("permanent")).envelopes[0].recipients
    second = FakeTransport(failure("transient"))
    send("during", Delivered("250 OK"), lease_seconds=LEASE,
         on_data=lambda _: (take_over(), deliverer(store, second, worker="host:2", clock=Clock(None))(
             [labels.id("during")])))
    send("late", Delivered("250 OK"), lease_seconds=LEASE, on_data=lambda _: take_over())
    seen["late sent again"] = len(send("late").envelopes)
    third = FakeTransport(Delivered("250 OK"))
    seen["before handed over"] = len(send(
        "before", Delivered("250 OK"), lease_seconds=LEASE,
        on_connect=lambda _: (take_over(), deliverer(store, third, worker="host:3", clock=Clock(None))(
            [labels.id("before")]))).envelopes)
    seen["other workers"] = (len(second.envelopes), len(third.envelopes))
    seen["before admin"] = quota(store, "alpha")
    admin = Controller(store, KEY, 600, Handed())
    for action, names in (("failed.retry", ["failed", "partial"]), ("ambiguous.resend", ["ambiguous"]),
                          ("ambiguous.close", ["closed"])):
        admin(control_message(action, KEY, ids=[labels.id(n) for n in names]))
    send("quota", Before(failure("quota")))
    return {"ledger": ledger(store, labels), "quota": quota(store, "alpha"), "seen": seen}


def test_delivery_outcomes_and_leases_are_recorded_alike(real_store):
    assert_alike(*both(real_store, delivery))
