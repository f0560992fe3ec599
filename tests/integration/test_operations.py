"""What an operator watches: metrics scraped during real runs, health checks, JSON logs under `dramatiq`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PG_ADMIN, TEST_KEY, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.net import free_port
from tests.peers.smtp import SmtpPeer
from deskmail.workers.endpoint import serve_in_thread
from deskmail.workers.scheduler import heartbeat_step

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a counter never incremented has no series yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status_of(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def endpoint(config, store):
    """The metrics endpoint of this (test) process on a free port."""
    cfg = dataclasses.replace(config, metrics_port=free_port())
    httpd = serve_in_thread(cfg, store)
    yield cfg.metrics_port
    httpd.shutdown()
    httpd.server_close()


def test_a_scrape_during_a_pipeline_run_shows_outcomes_latency_backlog_quota_and_pause(runtime, store, worker,
                                                                                      publisher, endpoint):
    before = scrape(endpoint)
    with SmtpPeer() as peer, SmtpPeer(users={"desk": "right-Pa55"}, auth_require_tls=False) as guarded:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none", per_day=3))
        runtime.settings.save("beta", smtp_settings(guarded, security="none", user="desk", password="wrong-Pa55"))
        worker()
        ids = [publisher.publish(event(subject=f"m{i}")) for i in range(5)]
        bad = publisher.publish(event(project="beta"))
        wait_until(lambda: store.project_counts("alpha") == {"sent": 3, "backlog": 2} and
                   store.get_mail(bad).state == "failed", timeout=30)
        after = scrape(endpoint)
    outcome = "deskmail_mail_outcomes_total"
    assert value(after, outcome, project="alpha", service="smtp", outcome="sent") - \
        value(before, outcome, project="alpha", service="smtp", outcome="sent") == 3
    assert value(after, outcome, project="beta", service="smtp", outcome="configuration") - \
        value(before, outcome, project="beta", service="smtp", outcome="configuration") == 1
    sends = "deskmail_send_duration_seconds_count"
    assert value(after, sends, service="smtp", outcome="delivered") - \
        value(before, sends, service="smtp", outcome="delivered") == 3
    assert value(after, "deskmail_admissions_total", project="alpha", state="backlog", reason="daily_limit") + \
        value(after, "deskmail_admissions_total", project="alpha", state="backlog", reason="project_paused") >= 2
    backlog = value(after, "deskmail_backlog_mails", project="alpha", reason="daily_limit") + \
        value(after, "deskmail_backlog_mails", project="alpha", reason="project_paused")
    assert backlog == 2 and value(before, "deskmail_backlog_mails", project="alpha", reason="daily_limit") == 0
    assert value(after, "deskmail_quota_used", scope="alpha") == 3
    assert value(after, "deskmail_quota_limit", scope="alpha") == 3
    assert value(after, "deskmail_quota_used", scope="global") == 3  # beta's failed mail never left: unit given back
    assert ("deskmail_project_paused_seconds", (("project", "alpha"), ("reason", "daily_limit"))) in after
    assert ("deskmail_project_config_error_seconds", (("project", "beta"),)) in after
    assert value(after, "deskmail_mails", project="beta", state="failed") == 1
    assert value(after, "deskmail_ledger_up") == 1
    groups = "deskmail_data_phase_group_size_sum"  # the three mails alpha sent each entered DATA once
    assert value(after, groups) - value(before, groups) == 3
    assert len(ids) == 5


def test_oldest_waiting_mail_and_scheduler_heartbeat_are_gauges(runtime, store, endpoint):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
    store.admit(event() | {"to": [{"address": "user@example.com"}]}, priority=1, recipients=1)
    with store.pool.connection() as conn:  # nobody took it for ten minutes
        conn.execute("UPDATE mail SET received_at = now() - interval '10 minutes'")
    samples = scrape(endpoint)
    assert 590 < value(samples, "deskmail_oldest_waiting_seconds", project="alpha") < 700
    assert ("deskmail_scheduler_heartbeat_age_seconds", ()) not in samples  # no scheduler ever ran
    heartbeat_step(store)()
    samples = scrape(endpoint)
    assert 0 <= value(samples, "deskmail_scheduler_heartbeat_age_seconds") < 30
    assert value(samples, "deskmail_schedulers_alive") == 1


def test_healthz_always_answers_and_readyz_tells_an_unreachable_database(config, store, endpoint):
    assert status_of(endpoint, "/healthz") == (200, b"ok\n")
    status, body = status_of(endpoint, "/readyz")
    assert status == 200 and json.loads(body)["ok"] is True
    broken = dataclasses.replace(config, metrics_port=free_port(), database_url="postgresql://postgres@127.0.0.1:1/x")
    httpd = serve_in_thread(broken, store)
    try:
        status, body = status_of(broken.metrics_port, "/readyz")
        assert status == 503 and json.loads(body)["cause"] == "database_unreachable"
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- real `dramatiq -p 2` processes -------------------------------------------------------------------

def worker_env(config, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESKMAIL_", "PROMETHEUS_"))}
    env.update({"DESKMAIL_DATABASE_URL": config.database_url, "DESKMAIL_AMQP_URL": config.amqp_url,
                "DESKMAIL_SECRET_KEYS": TEST_KEY, "DESKMAIL_CONTROL_KEY": config.control_key,
                "DESKMAIL_OUTBOUND_ALLOW": "127.0.0.0/8", **extra})
    return env


@pytest.fixture
def dramatiq_group(config, runtime, tmp_path):
    """Start `dramatiq workers.app:setup -p 2` with the given environment; stopped with SIGTERM at the end."""
    started: list[subprocess.Popen] = []

    def start(*queues: str, **extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"dramatiq-{len(started)}.log"
        argv = [str(BIN / "dramatiq"), "deskmail.workers.app:setup", "-p", "2", "-t", "2",
                *(["-Q", *queues] if queues else [])]
        proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(config, **extra), stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_worker_processes_serve_one_endpoint_that_sums_them_and_log_json_lines(runtime, store, publisher,
                                                                                   dramatiq_group, tmp_path):
    port = free_port()
    refused = lambda envelope: "554 5.6.0 refused by policy" if b"Subject: p3\r" in envelope.content else None  # noqa: E731
    with SmtpPeer(data_reply=refused) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
        _, log = dramatiq_group(DESKMAIL_METRICS_PORT=str(port), DESKMAIL_METRICS_DIR=str(tmp_path / "prom"),
                                DESKMAIL_LOG_FORMAT="json", DESKMAIL_LOG_LEVEL="DEBUG")
        wait_until(lambda: status_of(port, "/healthz")[0] == 200 if port_open(port) else False, timeout=60)
        ids = [publisher.publish(event(subject=f"p{i}")) for i in range(12)]
        wait_until(lambda: store.project_counts("alpha") == {"sent": 11, "failed": 1}, timeout=60)
        samples = scrape(port)
    assert value(samples, "deskmail_mail_outcomes_total", project="alpha", service="smtp", outcome="sent") == 11
    assert value(samples, "deskmail_mail_outcomes_total", project="alpha", service="smtp", outcome="failed") == 1
    assert value(samples, "deskmail_admissions_total", project="alpha", state="queued", reason="") == 12
    # both worker processes took mail, and the endpoint added up the files of both
    assert len(list((tmp_path / "prom").glob("counter_*.db"))) >= 2
    assert status_of(port, "/readyz")[0] == 200
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("event_id") in ids and line["logger"] == "deskmail.workers.delivery"]
    assert about, "no JSON line about a mail from the delivery worker"
    for line in about:  # the refused mail's line, logged in the middle of a batch of mails
        assert line["project"] == "alpha" and line["service"] == "smtp" and line["attempt"] == 1
        assert line["host"] and line["level"] == "INFO" and "554 5.6.0" in line["message"]
        assert line["event_id"] in line["message"]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- deskmail healthcheck --------------------------------------------------------------------------------

def healthcheck(config, *args: str, **env: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    done = subprocess.run([str(BIN / "deskmail"), "healthcheck", "--json", *args], cwd=ROOT,
                          env=worker_env(config, **env), capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout), time.monotonic() - started


def test_healthcheck_is_healthy_with_consumers_and_a_fresh_heartbeat_and_names_each_cause(config, runtime, store,
                                                                                         dramatiq_group):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
    status, report, _ = healthcheck(config, "--no-scheduler")
    assert status == 6 and report["cause"] == "queue_without_consumer"
    assert "deskmail.smtp" in next(c["detail"] for c in report["checks"] if c["name"] == "consumers")
    dramatiq_group()
    wait_until(lambda: healthcheck(config, "--no-scheduler")[0] == 0, timeout=60, interval=0.5)
    status, report, _ = healthcheck(config)
    assert status == 7 and report["cause"] == "scheduler_stale"
    heartbeat_step(store)()
    status, report, _ = healthcheck(config)
    assert status == 0 and report["ok"] and report["consumers"]["deskmail.smtp"] == 2
    with store.pool.connection() as conn:
        conn.execute("UPDATE scheduler_heartbeats SET beat_at = now() - interval '5 minutes'")
    status, report, _ = healthcheck(config)
    scheduler = next(c for c in report["checks"] if c["name"] == "scheduler")
    assert status == 7
    assert "last heartbeat 30" in scheduler["detail"] and "DESKMAIL_HEARTBEAT_MAX_AGE" in scheduler["detail"]


def test_healthcheck_says_not_migrated_for_an_empty_database(config):
    name = f"deskmail_empty_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        status, report, _ = healthcheck(config, DESKMAIL_DATABASE_URL=url)
        assert status == 4 and "deskmail db migrate" in report["checks"][1]["detail"]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never says a word (a frozen peer)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


def test_healthcheck_reports_a_silent_database_and_broker_within_its_timeout(config, silent_port):
    status, report, elapsed = healthcheck(
        config, DESKMAIL_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{silent_port}/x",
        DESKMAIL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{silent_port}/%2F")
    assert status == 3 and report["cause"] == "database_unreachable"
    assert {c["name"]: c["ok"] for c in report["checks"]} == {"database": False, "broker": False}
    # the checks give up after DESKMAIL_HEALTH_TIMEOUT (3 s); without it this hangs for minutes
    assert report["seconds"] < 3 + 1.5 and elapsed < 60


def test_healthcheck_reports_a_broker_that_refuses_connections(config):
    status, report, _ = healthcheck(config, "--no-scheduler",
                                    DESKMAIL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    assert status == 5 and report["cause"] == "broker_unreachable"


def test_the_scheduler_serves_its_heartbeat_on_its_own_endpoint(config, runtime, tmp_path):
    port = free_port()
    log = (tmp_path / "scheduler.log").open("wb")
    proc = subprocess.Popen([str(BIN / "deskmail"), "scheduler"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=worker_env(config, DESKMAIL_METRICS_PORT=str(port), DESKMAIL_SCHEDULER_INTERVAL="1"),
                            start_new_session=True)
    try:
        wait_until(lambda: port_open(port), timeout=30)
        samples = wait_until(lambda: (s := scrape(port)) and value(s, "deskmail_schedulers_alive") == 1 and s,
                             timeout=30)
        assert value(samples, "deskmail_scheduler_heartbeat_age_seconds") < 10
        assert status_of(port, "/healthz")[0] == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
