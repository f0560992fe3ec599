"""Measures a bulk control action: `deskmail backlog resume --all` over a large backlog.

It makes a database and a RabbitMQ vhost of its own, admits N mails of one project over its daily
limit (they wait in the backlog), starts a Dramatiq worker group sending to a local sink and the
control worker in a process of its own (on a control vhost, as deployed), then runs
the command and reports, as one JSON line: the seconds until the command had its answer, the
seconds until the first mail reached the sink, and how many had arrived by the answer.

    .venv/bin/python deploy/control_bench.py [--mails 100000] [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

import psycopg

from deskmail.producers.sink import MailSink
from deskmail.workers.config import Config
from deskmail.workers.runtime import Runtime
from deskmail.workers.secrets import generate_key

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> int:
    """Run the measurement once; prints one JSON object."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--mails", type=int, default=100_000)
    options.add_argument("--processes", type=int, default=2)
    options.add_argument("--threads", type=int, default=8)
    args = options.parse_args()
    tag = uuid.uuid4().hex[:8]
    database, vhost, control_vhost = f"deskmail_cbench_{tag}", f"deskmail-cbench-{tag}", f"deskmail-cbench-c-{tag}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    for name in (vhost, control_vhost):
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True)
    env = {**os.environ, "DESKMAIL_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + "/" + database,
           "DESKMAIL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}", "DESKMAIL_SECRET_KEYS": generate_key(),
           "DESKMAIL_CONTROL_KEY": uuid.uuid4().hex, "DESKMAIL_OUTBOUND_ALLOW": "127.0.0.0/8",
           "DESKMAIL_CONTROL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{control_vhost}",
           "DESKMAIL_LOG_LEVEL": "WARNING"}
    sink = MailSink(write_files=False, track=True).start()
    worker = control = None
    try:
        runtime = Runtime(Config.from_env(env))
        runtime.store.migrate()
        runtime.settings.save("bench", {"mail_service": "smtp", "from_address": "desk@example.org",
                                        "limits": {"per_day": 1},
                                        "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                                                 "auth": "none"}})
        started = time.monotonic()
        for start in range(0, args.mails + 1, 2000):
            runtime.store.admit_many([({"event_id": str(uuid.uuid4()), "project": "bench", "kind": "notification",
                                        "to": [f"user{start + i}@example.com"], "subject": f"bench {start + i}",
                                        "text": "Hello"}, 1, 1) for i in range(min(2000, args.mails + 1 - start))])
        admitted = time.monotonic() - started
        backlog = runtime.store.count_in_state("backlog", "bench")
        runtime.close()
        worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "deskmail.workers.app:setup",
                                   "-p", str(args.processes), "-t", str(args.threads)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        control = subprocess.Popen([sys.executable, "-m", "dramatiq", "deskmail.workers.app:control",
                                    "-p", "1", "-t", "1"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deskmail = [sys.executable, "-m", "deskmail.producers.cli"]
        subprocess.run([*deskmail, "broker", "declare"], env=env, check=True, capture_output=True)
        ready = subprocess.run([*deskmail, "limits", "set", "--project", "bench", "--recipients-per-mail", "50"],
                               env={**env, "DESKMAIL_CONTROL_TIMEOUT": "60"}, capture_output=True, text=True)
        assert ready.returncode == 0, ready.stderr
        time.sleep(1)
        before = sink.count
        command = [*deskmail, "backlog", "resume", "--all", "--project", "bench", "--json"]
        t0 = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        answered = time.time() - t0
        arrived = sink.count - before
        first = min((at for at in sink.accepted_at.values() if at >= t0), default=None)
        answer = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()}
        print(json.dumps({"mails_in_backlog": backlog, "admission_seconds": round(admitted, 1),
                          "command": "deskmail backlog resume --all --project bench --json",
                          "exit": done.returncode, "answer_seconds": round(answered, 2),
                          "first_mail_seconds": round(first - t0, 2) if first else None,
                          "arrived_by_answer": arrived, "touched": answer.get("touched"),
                          "counts": answer.get("counts"), "answer_bytes": len(done.stdout),
                          "worker_processes": args.processes, "threads": args.threads}))
        return 0 if done.returncode == 0 else 1
    finally:
        for process in (worker, control):
            if process is not None:
                process.terminate()
                process.wait(30)
        sink.stop()
        for name in (vhost, control_vhost):
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, capture_output=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
