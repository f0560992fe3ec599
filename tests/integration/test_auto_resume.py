"""Auto resume: at the day's rollover (injected clock), on a limit raise, in either order; DST days;
many drainers at once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from deskmail.producers import control
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.app import enqueuer
from deskmail.workers.scheduler import Scheduler, auto_resume_step


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def admit_many(store, n: int, project: str = "alpha") -> list[str]:
    ids = []
    for i in range(n):
        ev = event(project, subject=f"m{i}") | {"to": [{"address": "u@example.com"}]}
        store.admit(ev, priority=1, recipients=1)
        ids.append(ev["event_id"])
    return ids


def states(store, ids) -> list[str]:
    return [store.get_mail(i).state for i in ids]


def command(config, store, publisher, action, **fields):
    return control.send(publisher, store, control.control_message(action, config.control_key, **fields), 15)


def test_backlog_drains_at_the_rollover_of_the_projects_day(config, runtime, store, worker, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=2, time_zone="Pacific/Auckland"))
    store.set_auto_resume("alpha", True)
    admitted = admit_many(store, 5)
    ids = [i for i in admitted if store.get_mail(i).state == "backlog"]
    assert len(ids) == 3
    broker = worker()
    today = Scheduler(store, enqueuer(broker), config, [auto_resume_step(store)])
    assert today.tick()["auto_resumed"] == 0  # no quota left today
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    Scheduler(store, enqueuer(broker), config, [auto_resume_step(store, lambda: tomorrow)]).tick()
    wait_until(lambda: states(store, ids).count("sent") == 2)  # tomorrow's quota of 2
    assert states(store, ids).count("backlog") == 1
    assert store.get_project("alpha").paused_reason == "daily_limit"  # one still waits for the day after


def test_raising_the_limit_with_auto_resume_on_drains_and_unpauses(config, runtime, store, worker, publisher, peer,
                                                                  tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=1))
    ids = admit_many(store, 4)
    worker()
    assert command(config, store, publisher, "auto_resume.set", project="alpha", enabled=True)["touched"] == 0
    answer = command(config, store, publisher, "limits.set", project="alpha", per_day=10)
    assert answer["touched"] == 3
    wait_until(lambda: states(store, ids).count("sent") == 3)  # the first one was queued, never handed on here
    assert store.get_project("alpha").paused_reason is None


def test_turning_auto_resume_on_after_raising_the_limit_drains_too(config, runtime, store, worker, publisher, peer,
                                                                  tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=1))
    ids = admit_many(store, 4)
    worker()
    assert command(config, store, publisher, "limits.set", project="alpha", per_day=10)["touched"] == 0
    answer = command(config, store, publisher, "auto_resume.set", project="alpha", enabled=True)
    assert answer["touched"] == 3
    wait_until(lambda: states(store, ids).count("sent") == 3)


@pytest.mark.parametrize("utc, local_day", [
    ("2026-10-24T21:59:00+00:00", "2026-10-24"),  # 23:59 CEST on the 25-hour day's eve
    ("2026-10-24T22:00:00+00:00", "2026-10-25"),  # midnight CEST: the 25-hour day starts
    ("2026-10-25T22:59:00+00:00", "2026-10-25"),  # 23:59 CET, still the same (long) day
    ("2026-10-25T23:00:00+00:00", "2026-10-26"),
    ("2026-03-28T22:59:00+00:00", "2026-03-28"),  # 23:59 CET
    ("2026-03-28T23:00:00+00:00", "2026-03-29"),  # midnight: the 23-hour day starts
    ("2026-03-29T21:59:00+00:00", "2026-03-29"),  # 23:59 CEST, same short day
    ("2026-03-29T22:00:00+00:00", "2026-03-30"),
])
def test_quota_is_counted_on_the_projects_calendar_day_across_dst(runtime, store, utc, local_day):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=5, time_zone="Europe/Berlin"))
    store.set_global_limits(per_day=0)
    with store.pool.connection() as conn:  # one mail waits, paused by hand
        conn.execute("UPDATE projects SET paused_reason = 'admin', auto_resume = true WHERE key = 'alpha'")
    admit_many(store, 1)
    assert store.auto_resume(datetime.fromisoformat(utc)) == {"alpha": 1}
    with store.pool.connection() as conn:
        days = [str(r["day"]) for r in conn.execute("SELECT day FROM quota_counters WHERE scope = 'alpha'")]
    assert days == [local_day]


def test_many_drainers_at_once_resume_each_mail_once_and_exactly_the_limit(runtime, store):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=1))
    ids = admit_many(store, 301)
    store.set_project_limits("alpha", per_day=201)
    store.set_auto_resume("alpha", True)
    results: list[int] = []
    now = datetime.now(timezone.utc)

    def drain() -> None:
        for _ in range(10):
            results.append(store.auto_resume(now, batch=7).get("alpha", 0))

    threads = [threading.Thread(target=drain) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 200
    assert states(store, ids).count("queued") == 201 and states(store, ids).count("backlog") == 100
    assert store.sent_today("alpha", "UTC") == 201
