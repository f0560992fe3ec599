"""The deskmail command against the real services: settings, publish, mail show, migrate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_KEY, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer


def deskmail(config, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESKMAIL_DATABASE_URL": config.database_url, "DESKMAIL_AMQP_URL": config.amqp_url,
           "DESKMAIL_SECRET_KEYS": TEST_KEY, "DESKMAIL_CONTROL_KEY": config.control_key}
    return subprocess.run([sys.executable, "-m", "deskmail.producers.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


def test_settings_are_stored_encrypted_and_shown_redacted(config, store, worker, tmp_path: Path):
    worker()
    path = tmp_path / "s.json"
    with SmtpPeer() as peer:
        path.write_text(json.dumps(smtp_settings(peer, password="Canary-Secret-4711")))
    done = deskmail(config, "settings", "set", "alpha", "--file", str(path))
    assert done.returncode == 0, done.stderr
    with store.pool.connection() as conn:
        row = conn.execute("SELECT settings::text AS s, secrets FROM projects WHERE key = 'alpha'").fetchone()
    assert "Canary-Secret-4711" not in row["s"] and b"Canary-Secret-4711" not in bytes(row["secrets"])
    shown = deskmail(config, "settings", "show", "alpha")
    assert '"password": "********"' in shown.stdout and "Canary" not in shown.stdout


def test_settings_set_names_the_bad_field(config, store, tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"mail_service": "smtp", "from_address": "d@example.org",
                                "smtp": {"host": "h.example.org", "port": 70000, "auth": "none"}}))
    done = deskmail(config, "settings", "set", "alpha", "--file", str(path))
    assert done.returncode == 1 and "smtp.port" in done.stderr


def test_publish_reports_bad_lines_by_number_and_still_sends_the_good_ones(config, runtime, store, worker, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        worker()
        good = event()
        lines = "\n".join([json.dumps(good), "{not json", json.dumps(event(to=["nobody"]))]) + "\n"
        done = deskmail(config, "publish", "-", stdin=lines)
        assert done.returncode == 1
        assert done.stdout.split() == [good["event_id"]]
        assert "line 2: (line): not valid JSON" in done.stderr and "line 3: to[0]" in done.stderr
        wait_until(lambda: (m := store.get_mail(good["event_id"])) and m.state == "sent")
        shown = deskmail(config, "mail", "show", good["event_id"], "--json")
        assert json.loads(shown.stdout)["state"] == "sent"


def test_migrate_is_safe_to_run_again(config):
    done = deskmail(config, "db", "migrate")
    assert done.returncode == 0 and "schema is up to date" in done.stdout


def test_backlog_list_shows_waiting_mails_in_arrival_order_and_pages(config, runtime, store):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=1))
    ids = []
    for i in range(4):
        ev = event(subject=f"waiting {i}") | {"to": [{"address": "u@example.com"}]}
        store.admit(ev, priority=1, recipients=1)
        ids.append(ev["event_id"])
    first = json.loads(deskmail(config, "backlog", "list", "--project", "alpha", "--limit", "2", "--json").stdout)
    assert [r["event_id"] for r in first] == ids[1:3]
    assert first[0]["reason"] == "daily_limit" and first[1]["reason"] == "project_paused"
    rest = deskmail(config, "backlog", "list", "--after", str(first[-1]["seq"]))
    assert ids[3] in rest.stdout and ids[1] not in rest.stdout and "waiting 3" in rest.stdout


def test_every_kind_of_secret_is_sealed_and_redacted(config, runtime, store):
    canaries = {"exchange": "Ews-Canary-1", "client_secret": "Secret-Canary-2", "private_key": "Key-Canary-3",
                "refresh_token": "Refresh-Canary-4", "service_account_key": "Sa-Canary-5"}
    runtime.settings.save("ews", {"mail_service": "exchange", "from_address": "d@example.org", "exchange": {
        "ews_url": "https://mail.example.org/EWS/Exchange.asmx", "username": "EXAMPLE\\d",
        "password": canaries["exchange"]}})
    runtime.settings.save("m365", {"mail_service": "exchange_oauth2", "from_address": "d@example.org",
                                   "exchange_oauth2": {"tenant_id": "t", "client_id": "c", "sender": "d@example.org",
                                                       "certificate": {"private_key": canaries["private_key"],
                                                                       "thumbprint": "a" * 40}}})
    runtime.settings.save("m365b", {"mail_service": "exchange_oauth2", "from_address": "d@example.org",
                                    "exchange_oauth2": {"tenant_id": "t", "client_id": "c", "sender": "d@example.org",
                                                        "client_secret": canaries["client_secret"]}})
    runtime.settings.save("gmail", {"mail_service": "gmail_oauth2", "from_address": "d@example.org", "gmail_oauth2": {
        "sender": "d@example.org", "client_id": "c", "client_secret": "x", "refresh_token": canaries["refresh_token"]}})
    runtime.settings.save("gsa", {"mail_service": "gmail_oauth2", "from_address": "d@example.org", "gmail_oauth2": {
        "sender": "d@example.org", "service_account_key": {"client_email": "a@b.iam.gserviceaccount.com",
                                                           "private_key": canaries["service_account_key"],
                                                           "token_uri": "https://oauth2.googleapis.com/token"}}})
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT settings::text AS s, secrets FROM projects").fetchall()
    stored = " ".join(r["s"] for r in rows) + " ".join(bytes(r["secrets"]).decode("latin-1") for r in rows)
    shown = json.dumps([runtime.settings.shown(key) for key in ("ews", "m365", "m365b", "gmail", "gsa")])
    for canary in canaries.values():
        assert canary not in stored and canary not in shown
    assert runtime.settings.load("m365").document["exchange_oauth2"]["certificate"]["private_key"] == "Key-Canary-3"
    assert shown.count("********") == 6  # gmail has two secrets: client_secret and refresh_token
