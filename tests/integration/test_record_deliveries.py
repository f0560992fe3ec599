"""deskmail_record_deliveries writes a group of plain deliveries exactly as deskmail_record_outcome writes
them one by one: generated groups over every case a late or repeated outcome meets (lease still held,
taken over, queued again by a takeover with the same lease, already written, attempt row lost or
written before, left failed or ambiguous by a takeover, mail missing, projects with and without a
configuration error)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb

from deskmail.workers.constants import State
from deskmail.workers.records import AttemptOutcome, Claim
from deskmail.workers.store import plain

SEEDS = range(40)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
CASES = ("held", "taken_over", "requeued", "written", "parked", "lost_attempt", "written_attempt", "missing")

ONE_BY_ONE = """SELECT r.event_id FROM jsonb_to_recordset(%(rows)s) AS r(event_id uuid, token uuid, attempt integer,
                  started timestamptz, outcome text, state text, reason text, detail text, refused jsonb,
                  deferred text[], message_id text, delay double precision, refund boolean, config_error text,
                  pause text)
                 WHERE deskmail_record_outcome(r.event_id, r.token, r.attempt, 'host:1', r.started, r.outcome,
                       r.state, r.reason, r.detail, r.refused, r.deferred, r.message_id, r.delay, r.refund,
                       r.config_error, r.pause)"""
SET_WISE = "SELECT d AS event_id FROM deskmail_record_deliveries(%(rows)s, 'host:1') AS d"
CHOSEN = "SELECT d AS event_id FROM deskmail_record_outcomes(%(rows)s, 'host:1', %(plain)s) AS d"

MAILS = """SELECT event_id, state, reason, detail, refused, deferred, message_id, next_attempt_at IS NULL AS not_due,
                  sent_at = now() AS sent_now, sent_at IS NULL AS never_sent, phase, lease_until IS NULL AS released,
                  takeover_marked_at IS NULL AS unmarked, updated_at = now() AS touched
             FROM mail ORDER BY event_id"""
ATTEMPTS = """SELECT event_id, attempt, worker, started_at, ended_at = now() AS ended_now, phase, outcome, detail
                FROM attempts ORDER BY event_id, attempt"""
PROJECTS = "SELECT key, config_error, config_error_at IS NULL AS clear FROM projects ORDER BY key"


def group(seed: int) -> tuple[list[str], list[dict]]:
    """A generated group: each mail's case, and the outcome rows the store would send for them."""
    rng = random.Random(seed)
    cases = [rng.choice(CASES) for _ in range(rng.randint(1, 6))]
    rows = []
    for _ in cases:
        refused = {"x@example.com": "550 no such user"} if rng.random() < 0.3 else None
        rows.append({"event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                     "token": str(uuid.UUID(int=rng.getrandbits(128))), "attempt": rng.randint(1, 3),
                     "started": "2026-12-01T09:00:00+00:00", "outcome": "partial" if refused else "sent",
                     "state": "sent", "reason": None, "detail": f"250 2.0.0 ok {rng.random()}",
                     "refused": refused, "deferred": None, "message_id": rng.choice([None, "<m@desk.example>"]),
                     "delay": 0.0, "refund": False, "config_error": None, "pause": None})
    return cases, sorted(rows, key=lambda r: r["event_id"])


def prepare(conn: psycopg.Connection, seed: int, cases: list[str], rows: list[dict]) -> None:
    rng = random.Random(seed + 1000)
    conn.execute("INSERT INTO projects (key, mail_service, settings, config_error, config_error_at) VALUES "
                 "('alpha', 'smtp', '{}', 'wrong password', now()), ('beta', 'smtp', '{}', NULL, NULL)")
    for case, row in zip(cases, rows):
        if case == "missing":
            continue
        token = row["token"] if case != "taken_over" else str(uuid.UUID(int=rng.getrandbits(128)))
        state = {"requeued": "queued", "written": "sent", "parked": rng.choice(["failed", "ambiguous"])}.get(
            case, "sending")
        conn.execute("""INSERT INTO mail (event_id, project, kind, state, mail_service, event, subject, lease_token,
                                          lease_until, phase, refused, message_id, sent_at, takeover_marked_at)
                        VALUES (%s, %s, 'notification', %s, 'smtp', '{}', 's', %s, now(), %s, %s, %s, %s, %s)""",
                     (row["event_id"], rng.choice(["alpha", "beta"]), state, token, rng.choice([None, "data"]),
                      Jsonb({"old@example.com": "550"}) if rng.random() < 0.5 else None,
                      rng.choice([None, "<old@desk.example>"]),
                      "2026-11-30T00:00:00+00:00" if state == "sent" else None,
                      "2026-12-01T08:59:00+00:00" if rng.random() < 0.3 else None))
        if case in ("lost_attempt", "written_attempt"):
            conn.execute("INSERT INTO attempts (event_id, attempt, worker, started_at, phase, outcome, detail) "
                         "VALUES (%s, %s, 'host:2', '2026-12-01T08:00:00+00:00', 'data', %s, 'before')",
                         (row["event_id"], row["attempt"], "lost" if case == "lost_attempt" else "sent"))


def written(conn: psycopg.Connection, statement: str, rows: list[dict], plain: bool = True) -> tuple:
    recorded = sorted(str(r[0]) for r in conn.execute(statement, {"rows": Jsonb(rows), "plain": plain}))
    return (recorded, conn.execute(MAILS).fetchall(), conn.execute(ATTEMPTS).fetchall(),
            conn.execute(PROJECTS).fetchall())


@pytest.mark.parametrize("seed", SEEDS)
def test_a_group_of_deliveries_is_written_as_one_outcome_after_another(config, runtime, seed):
    cases, rows = group(seed)
    answers = []
    with psycopg.connect(config.database_url) as conn:
        for statement in (ONE_BY_ONE, SET_WISE):
            with conn.transaction(force_rollback=True):
                prepare(conn, seed, cases, rows)
                answers.append(written(conn, statement, rows))
    one_by_one, set_wise = answers
    assert set_wise == one_by_one, cases


def test_the_groups_meet_every_case():
    met = {case for seed in SEEDS for case in group(seed)[0]}
    assert met == set(CASES)
    assert any(len(set(group(seed)[0])) >= 4 for seed in SEEDS)


def retried(row: dict) -> dict:
    """The same attempt recorded as a retry instead."""
    return {**row, "outcome": "retry", "state": "queued", "detail": "421 try later", "delay": 30.0}


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_a_group_is_written_by_the_function_the_store_chooses_for_it(config, runtime, seed):
    """deskmail_record_outcomes writes a group as the outcomes one by one: a plain group set-wise, and one
    the store does not call plain (here: holding a retry, which only the per-mail function records, or a
    mail twice) one by one."""
    cases, rows = group(seed)
    mixed = [retried(rows[0]), *rows[1:]]
    twice = sorted([*rows, rows[0]], key=lambda r: r["event_id"])
    with psycopg.connect(config.database_url) as conn:
        for outcomes, plain in ((rows, True), (mixed, False), (twice, False)):
            answers = []
            for statement in (ONE_BY_ONE, CHOSEN):
                with conn.transaction(force_rollback=True):
                    prepare(conn, seed, cases, rows)
                    answers.append(written(conn, statement, outcomes, plain))
            assert answers[1] == answers[0], (cases, outcomes[0]["outcome"])


def test_the_store_calls_plain_only_deliveries_of_distinct_mails():
    mail, other = (Claim(uuid.UUID(int=i), "alpha", "notification", 1, {}, "<m@x>", 1, uuid.UUID(int=i + 9), NOW,
                         NOW, None, "alpha", 1) for i in (1, 2))
    sent = AttemptOutcome("sent", State.SENT, "250 ok")
    partial = AttemptOutcome("partial", State.SENT, "250 ok", refused={"x@example.com": "550"})
    assert plain([]) and plain([(mail, sent), (other, partial)])
    assert not plain([(mail, sent), (mail, sent)])
    for outcome in (AttemptOutcome("retry", State.QUEUED, "421", delay=30.0),
                    AttemptOutcome("failed", State.FAILED, "550", "permanent", refund=True),
                    AttemptOutcome("sent", State.SENT, "250 ok", refund=True),
                    AttemptOutcome("configuration", State.FAILED, "535", config_error="535 bad password"),
                    AttemptOutcome("quota", State.BACKLOG, "452", pause="provider_quota")):
        assert not plain([(mail, sent), (other, outcome)]), outcome
