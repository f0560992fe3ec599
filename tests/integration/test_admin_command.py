"""The deskmail command never says "done" when it did less: exit codes, reasons, unknown projects, settings."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.helpers import event, smtp_settings
from tests.integration.test_admin_writes import deskmail
from tests.peers.smtp import SmtpPeer

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def backlog(runtime, store, publisher):
    """Three backlog mails of project alpha (a limit of 1 a day; no worker sends them)."""
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=1))
    items = [(event(subject=f"m{i}"), 1, 1) for i in range(4)]
    admitted = store.admit_many(items)
    return [str(e["event_id"]) for (e, _, _), a in zip(items, admitted) if a.state == "backlog"]


def test_a_resume_that_did_less_than_asked_exits_1_with_each_reason_on_stderr(config, store, worker, backlog):
    worker()
    done = deskmail(config, "backlog", "resume", backlog[0], UNKNOWN)
    assert done.returncode == 1
    assert f"deskmail: {UNKNOWN}: unknown id" in done.stderr and "done: 1 mail(s)" in done.stdout
    done = deskmail(config, "backlog", "resume", backlog[0])
    assert done.returncode == 1 and f"deskmail: {backlog[0]}: not backlog (it is" in done.stderr
    done = deskmail(config, "backlog", "suspend", backlog[1], "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["counts"] == {"suspended": 1}


@pytest.mark.parametrize("command", [("limits", "show"), ("backlog", "list"), ("suspended", "list"),
                                     ("audit",), ("failed", "list"), ("ambiguous", "list"), ("status",)])
def test_every_command_refuses_an_unknown_project(config, backlog, command):
    done = deskmail(config, *command, "--project", "nobody")
    assert done.returncode == 1 and "deskmail: unknown project 'nobody'" in done.stderr
    assert deskmail(config, *command, "--project", "alpha").returncode == 0


def test_a_bulk_action_across_all_projects_needs_yes_and_has_a_dry_run(config, store, worker, backlog):
    worker()
    done = deskmail(config, "backlog", "suspend", "--all", "--dry-run", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["projects"] == {"alpha": 3}
    done = deskmail(config, "backlog", "suspend", "--all")  # no terminal to confirm on: refused
    assert done.returncode == 1 and "not confirmed" in done.stderr
    assert {store.get_mail(i).state for i in backlog} == {"backlog"}
    done = deskmail(config, "backlog", "suspend", "--all", "--yes")
    assert done.returncode == 0 and "done: 3 mail(s)" in done.stdout
    assert {store.get_mail(i).state for i in backlog} == {"suspended"}


def test_a_request_nobody_answered_is_listed_and_once_cancelled_never_applied(config, store, worker, backlog):
    done = deskmail(config, "backlog", "suspend", backlog[0], DESKMAIL_CONTROL_TIMEOUT="1")
    assert done.returncode == 1 and "no control worker answered" in done.stderr
    pending = json.loads(deskmail(config, "control", "pending", "--json").stdout)
    assert [p["action"] for p in pending] == ["backlog.suspend"]
    rid = str(pending[0]["request_id"])
    done = deskmail(config, "control", "cancel", rid)
    assert done.returncode == 0 and "cancelled" in done.stdout
    assert json.loads(deskmail(config, "control", "pending", "--json").stdout) == []
    worker()  # the control worker comes back and takes the queued message first, then the next one
    assert deskmail(config, "backlog", "suspend", backlog[1]).returncode == 0
    assert store.get_mail(backlog[0]).state == "backlog" and store.get_mail(backlog[1]).state == "suspended"
    assert [r["result"].get("cancelled") for r in store.audit(limit=20) if r["params"].get("request_id") == rid] \
        == [True]
    done = deskmail(config, "control", "cancel", str(uuid.uuid4()))
    assert done.returncode == 1 and "no command sent request" in done.stderr


def test_rejected_events_of_every_project_are_listed(config, store):
    rid = uuid.uuid4()
    store.keep_rejected(rid, "invalid", "to: is required", "{}", 2, project="nobody-knows")
    done = deskmail(config, "rejected", "list", "--json")
    rows = json.loads(done.stdout)
    assert done.returncode == 0 and [r["event_id"] for r in rows] == [str(rid)] and rows[0]["project"] == "nobody-knows"
    assert "nobody-knows" in deskmail(config, "rejected", "list").stdout


def test_a_bad_number_in_a_setting_names_the_variable_without_a_traceback(config):
    done = deskmail(config, "status", DESKMAIL_CONTROL_TIMEOUT="fifteen")
    assert done.returncode == 1 and "DESKMAIL_CONTROL_TIMEOUT: 'fifteen' is not a number" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_database_says_run_db_migrate(config):
    missing = config.database_url.rsplit("/", 1)[0] + "/deskmail_missing_" + uuid.uuid4().hex[:8]
    done = deskmail(config, "status", DESKMAIL_DATABASE_URL=missing)
    assert done.returncode == 1 and "does not exist" in done.stderr and "deskmail db migrate" in done.stderr
    done = deskmail(config, "status", DESKMAIL_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    assert done.returncode == 1 and "cannot reach PostgreSQL at 127.0.0.1:1" in done.stderr
    done = deskmail(config, "publish", "-", DESKMAIL_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    assert done.returncode == 1 and "cannot reach RabbitMQ" in done.stderr and "DESKMAIL_AMQP_URL" in done.stderr


def test_scheduler_once_version_and_completion_print_something_readable(config, store):
    done = deskmail(config, "scheduler", "--once", "--json")
    assert done.returncode == 0 and isinstance(json.loads(done.stdout), dict)
    done = deskmail(config, "scheduler", "--once")
    assert done.stdout.startswith("scheduler pass: ") and "{" not in done.stdout
    assert deskmail(config, "--version").stdout.startswith("deskmail ")
    assert "deskmail" in deskmail(config, "completion", "bash").stdout


def test_status_columns_fit_long_project_names(config, runtime, store):
    with SmtpPeer() as peer:
        runtime.settings.save("a-very-long-project-name", smtp_settings(peer))
    lines = deskmail(config, "status").stdout.splitlines()
    head, row = lines[0], next(line for line in lines if line.startswith("a-very-long-project-name"))
    assert row.index("active") == head.index("STATE")
