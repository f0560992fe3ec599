"""Admission in PostgreSQL when the same event arrives twice at the same moment (a redelivery race)."""

from __future__ import annotations

import threading

import psycopg
from psycopg.types.json import Jsonb

from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer

ADMIT = "SELECT state, reason, detail, mail_service, is_new FROM deskmail_admit_batch(%s)"


def batch(ev: dict) -> Jsonb:
    return Jsonb([{"event_id": ev["event_id"], "project": "alpha", "kind": "notification", "priority": 1,
                   "event": ev, "subject": "subject", "recipients": 1}])


def test_the_loser_of_a_concurrent_admission_gives_its_quota_back(config, runtime, store):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=5))
    ev = event()
    with psycopg.connect(config.database_url) as first, psycopg.connect(config.database_url, autocommit=True) as second:
        assert first.execute(ADMIT, (batch(ev),)).fetchone()[4] is True  # not committed yet
        answer: list[tuple] = []
        racer = threading.Thread(target=lambda: answer.append(second.execute(ADMIT, (batch(ev),))
                                                             .fetchone()))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second admission should wait on the first one's insert"
        first.commit()
        racer.join(5)
    assert answer[0][0] == "queued" and answer[0][4] is False
    with store.pool.connection() as conn:
        counts = {r["scope"]: r["sent"] for r in conn.execute("SELECT scope, sent FROM quota_counters")}
    assert counts == {"alpha": 1, "*": 1}
