"""Admin controls through the real control worker: resume, suspend, limits, audit, no worker."""

from __future__ import annotations

import pytest

from deskmail.producers import control
from deskmail.workers.app import build_broker
from deskmail.workers.constants import Queue
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def command(config, store, publisher, action: str, **fields):
    message = control.control_message(action, config.control_key, **fields)
    return control.send(publisher, store, message, timeout=15)


def over_limit(runtime, store, publisher, peer, tls_ca, n: int = 4, per_day: int = 1) -> list[str]:
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=per_day))
    ids = [publisher.publish(event(subject=f"m{i}")) for i in range(n)]
    wait_until(lambda: sum(store.get_mail(i) is not None and store.get_mail(i).state == "backlog"
                           for i in ids) == n - per_day)
    return [i for i in ids if store.get_mail(i).state == "backlog"]


def test_resume_selected_sends_them_counted_beyond_the_limit(config, runtime, store, worker, publisher, peer,
                                                            tls_ca):
    worker()
    backlog = over_limit(runtime, store, publisher, peer, tls_ca)
    answer = command(config, store, publisher, "backlog.resume", ids=backlog[:2], project="alpha")
    assert answer["ok"] and answer["touched"] == 2
    assert set(answer["outcomes"].values()) == {"resumed"}
    wait_until(lambda: all(store.get_mail(i).state == "sent" for i in backlog[:2]))
    assert store.get_mail(backlog[2]).state == "backlog"
    assert store.sent_today("alpha", "UTC") == 3
    assert store.get_project("alpha").paused_reason == "daily_limit"  # selected only: still paused


def test_resume_all_sends_the_backlog_and_unpauses(config, runtime, store, worker, publisher, peer, tls_ca):
    worker()
    backlog = over_limit(runtime, store, publisher, peer, tls_ca)
    answer = command(config, store, publisher, "backlog.resume", all=True, project="alpha")
    assert answer["touched"] == len(backlog)
    wait_until(lambda: all(store.get_mail(i).state == "sent" for i in backlog))
    assert store.get_project("alpha").paused_reason is None


def test_suspended_mails_are_kept_listed_and_can_be_resumed(config, runtime, store, worker, publisher, peer,
                                                          tls_ca):
    worker()
    backlog = over_limit(runtime, store, publisher, peer, tls_ca)
    answer = command(config, store, publisher, "backlog.suspend", ids=backlog, project="alpha")
    assert answer["touched"] == 3
    assert sorted(str(r["event_id"]) for r in store.list_state("suspended")) == sorted(backlog)
    answer = command(config, store, publisher, "suspended.resume", ids=[backlog[0]])
    assert answer["outcomes"] == {backlog[0]: "resumed"}
    wait_until(lambda: store.get_mail(backlog[0]).state == "sent")
    assert len(store.list_state("suspended")) == 2


def test_bad_ids_get_an_answer_each_and_good_ones_still_apply(config, runtime, store, worker, publisher, peer,
                                                             tls_ca):
    worker()
    backlog = over_limit(runtime, store, publisher, peer, tls_ca)
    sent = wait_until(lambda: next((m for m in map(store.get_mail, store_ids(store)) if m.state == "sent"), None))
    unknown = "00000000-0000-4000-8000-000000000000"
    answer = command(config, store, publisher, "backlog.suspend", ids=[backlog[0], unknown], project="nobody")
    assert not answer["ok"] and "unknown project 'nobody'" in answer["error"]
    runtime.settings.save("beta", smtp_settings(peer, tls_ca.ca_path))
    answer = command(config, store, publisher, "backlog.suspend", ids=[backlog[0], str(sent.event_id), unknown],
                     project="beta")
    assert answer["outcomes"] == {backlog[0]: "belongs to project alpha",
                                  str(sent.event_id): "belongs to project alpha", unknown: "unknown id"}
    assert answer["counts"] == {"belongs to project alpha": 2, "unknown id": 1} and answer["touched"] == 0
    answer = command(config, store, publisher, "backlog.suspend", ids=[backlog[0], str(sent.event_id)])
    assert answer["outcomes"] == {backlog[0]: "suspended", str(sent.event_id): "not backlog (it is sent)"}


def store_ids(store) -> list[str]:
    with store.pool.connection() as conn:
        return [r["event_id"] for r in conn.execute("SELECT event_id FROM mail ORDER BY seq").fetchall()]


def test_limits_are_set_by_command_and_a_negative_one_is_refused(config, runtime, store, worker, publisher, peer,
                                                                tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    worker()
    assert command(config, store, publisher, "limits.set", project="alpha", per_day=7)["ok"]
    assert store.get_project("alpha").per_day == 7
    assert command(config, store, publisher, "limits.set", **{"global": True}, per_day=100)["ok"]
    assert store.global_limits().per_day == 100
    refused = command(config, store, publisher, "limits.set", project="alpha", per_day=-1)
    assert not refused["ok"] and "per_day" in refused["error"]
    unknown = command(config, store, publisher, "limits.set", project="nowhere", per_day=1)
    assert not unknown["ok"] and "unknown project" in unknown["error"]
    actions = [(a["action"], a["result"]["ok"]) for a in store.audit()]
    assert actions[:2] == [("limits.set", False), ("limits.set", False)] and len(actions) == 4


def test_a_command_while_no_worker_runs_says_so(config, store, publisher):
    broker = build_broker(config)
    broker.declare_queue(Queue.CONTROL, ensure=True)
    broker.close()
    message = control.control_message("project.pause", config.control_key, project="alpha")
    with pytest.raises(control.NoAnswer, match="no control worker answered"):
        control.send(publisher, store, message, timeout=1)


def test_global_daily_limit_holds_across_two_projects(config, runtime, store, worker, publisher, peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    runtime.settings.save("beta", smtp_settings(peer, tls_ca.ca_path))
    store.set_global_limits(per_day=3)
    worker()
    ids = [publisher.publish(event(project)) for project in ("alpha", "beta") * 3]
    wait_until(lambda: all(store.get_mail(i) and store.get_mail(i).state in ("sent", "backlog") for i in ids))
    mails = [store.get_mail(i) for i in ids]
    assert sum(m.state == "sent" for m in mails) == 3 and store.sent_today("*", "UTC") == 3
    assert {m.reason for m in mails if m.state == "backlog"} <= {"global_daily_limit", "project_paused"}
    assert len(peer.wait_for(3)) == 3


def test_too_many_recipients_waits_alone_and_does_not_pause(config, runtime, store, worker, publisher, peer,
                                                           tls_ca):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, recipients=2))
    worker()
    big = publisher.publish(event(to=["a@example.com", "b@example.com", "A@example.com", "c@example.com"]))
    small = publisher.publish(event(to=["a@example.com", "A@example.com"]))  # one recipient after de-duplication
    wait_until(lambda: store.get_mail(small) and store.get_mail(small).state == "sent")
    mail = store.get_mail(big)
    assert mail.state == "backlog" and mail.reason == "too_many_recipients" and "3 > 2" in mail.detail
    assert store.get_project("alpha").paused_reason is None


def test_suspended_mail_survives_resume_all_and_auto_resume(config, runtime, store, worker, publisher, peer,
                                                           tls_ca):
    worker()
    backlog = over_limit(runtime, store, publisher, peer, tls_ca)
    command(config, store, publisher, "backlog.suspend", ids=[backlog[0]])
    command(config, store, publisher, "backlog.resume", all=True, project="alpha")
    command(config, store, publisher, "auto_resume.set", project="alpha", enabled=True)
    command(config, store, publisher, "limits.set", project="alpha", per_day=100)
    wait_until(lambda: all(store.get_mail(i).state == "sent" for i in backlog[1:]))
    assert store.get_mail(backlog[0]).state == "suspended"
