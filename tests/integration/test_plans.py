"""The sending path's lookups stay primary-key lookups however stale PostgreSQL's statistics are.

A burst fills `queued` and `sending` long before autovacuum analyzes the table again; with the
statistics of a quiet table the planner prefers reading a whole partial state index (every entry,
live and dead) for each claim and each DATA phase. Plans are read from auto_explain, which a
superuser session can load and have report to the client.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg.types.json import Jsonb
import pytest

from tests.integration.helpers import smtp_settings
from tests.peers.smtp import SmtpPeer

BURST = 4000


def stale_statistics(conn: psycopg.Connection) -> None:
    """Analyze a quiet table (sent mail only), then a burst arrives: half queued, half being sent."""
    conn.execute("""INSERT INTO mail (event_id, project, kind, state, mail_service, event, subject)
                    SELECT gen_random_uuid(), 'alpha', 'notification', 'sent', 'smtp', '{}', 's'
                      FROM generate_series(1, 2000)""")
    conn.execute("ANALYZE mail")
    conn.execute("""INSERT INTO mail (event_id, project, kind, state, mail_service, event, subject,
                                      lease_token, lease_until)
                    SELECT gen_random_uuid(), 'alpha', 'notification',
                           CASE WHEN i %% 2 = 0 THEN 'queued' ELSE 'sending' END, 'smtp', '{}', 's',
                           gen_random_uuid(), now() + interval '1 minute'
                      FROM generate_series(1, %s) AS i""", (BURST,))


def plans(conn: psycopg.Connection, statement: str, params: tuple, times: int = 8) -> str:
    """The plans auto_explain reports for the last of `times` runs (past plpgsql's custom plans)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for _ in range(times):
        notices.clear()
        with conn.transaction(force_rollback=True):
            conn.execute(statement, params)
    return "\n".join(notices)


@pytest.fixture
def explaining(config, runtime):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer))
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        stale_statistics(conn)
        conn.execute("LOAD 'auto_explain'")
        for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                        "client_min_messages = log"):
            conn.execute(f"SET {setting}")
        yield conn


def some(conn: psycopg.Connection, state: str, n: int = 8) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT event_id, lease_token FROM mail WHERE state = %s ORDER BY event_id LIMIT %s", (state, n))]


def test_plain_statements_on_these_statistics_choose_a_partial_state_index(explaining):
    """The premise: the lookups the sending path made as plain statements (a claim's join of its ids
    with the queued mails, a group's DATA marks) read a whole partial index here, else the tests after
    this one would prove nothing."""
    queued = [e for e, _ in some(explaining, "queued")]
    plan = plans(explaining, "SELECT x.event_id FROM unnest(%s::uuid[]) AS i(event_id) "
                             "JOIN mail x ON x.event_id = i.event_id WHERE x.state = 'queued' FOR UPDATE OF x",
                 (queued,))
    assert "mail_queued_due" in plan, plan
    held = some(explaining, "sending")
    plan = plans(explaining, "UPDATE mail m SET phase = 'data' "
                             "FROM unnest(%s::uuid[], %s::uuid[]) AS e(event_id, token) "
                             "WHERE m.event_id = e.event_id AND m.lease_token = e.token AND m.state = 'sending'",
                 ([e for e, _ in held], [t for _, t in held]))
    assert "mail_sending_lease" in plan, plan


def test_the_data_phase_is_marked_by_primary_key(explaining):
    held = some(explaining, "sending")
    plan = plans(explaining, "SELECT * FROM deskmail_enter_data(%s, %s)",
                 ([e for e, _ in held], [t for _, t in held]))
    assert "Index Scan using mail_pkey on mail" in plan, plan
    assert "mail_sending_lease" not in plan and "Seq Scan on mail" not in plan and "Bitmap" not in plan, plan


def test_a_claim_looks_its_mails_up_by_primary_key(explaining):
    ids = [e for e, _ in some(explaining, "queued")]
    plan = plans(explaining, "SELECT * FROM deskmail_claim(%s, 'host:1', 30, 'smtp')", (ids,))
    assert plan.count("Index Scan using mail_pkey on mail") == 2, plan  # the ids' rows, then the update's
    assert "mail_queued_due" not in plan and "Seq Scan on mail" not in plan and "Bitmap" not in plan, plan


def test_a_group_of_deliveries_is_written_by_primary_key(explaining):
    held = some(explaining, "sending")
    rows = [{"event_id": str(e), "token": str(t), "attempt": 1, "started": "2026-12-01T09:00:00+00:00",
             "outcome": "sent", "reason": None, "detail": "250 ok", "refused": None, "message_id": None}
            for e, t in held]
    plan = plans(explaining, "SELECT * FROM deskmail_record_deliveries(%s, 'host:1')", (Jsonb(rows),))
    assert "Index Scan using mail_pkey on mail" in plan, plan
    assert "Seq Scan on mail" not in plan and "Bitmap" not in plan and "mail_sending_lease" not in plan, plan
