"""Measures a bulk control action: `deskmail backlog resume --all` over a large backlog.

It makes a database and a RabbitMQ vhost of its own, admits N mails of one project over its daily
limit (they wait in the backlog), starts a Dramatiq worker group sending to a local sink and the
control worker in a process of its own (on a control vhost, as deployed), then runs
the command and reports, as one JSON line: the seconds until the command had its answer, the
seconds until the first mail reached the sink, and how many had arrived by the answer.

The command runs as an admin runs it, in text mode: `answer_seconds` is when its first line (the
answer) was printed, `done_seconds` when it exited, and the counts are those of the request's
recorded answer. `cpu_seconds` is what each process group spent from the command's start to its
exit: the control worker, the PostgreSQL backends serving it, every backend of the bench's
database, the sending workers, the bench process itself (the sink runs in it), the command, and
the whole machine (other users' load included).

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_proc import backend_client_port, cmdline, machine_busy, process_table, tcp_ports, tree  # noqa: E402

from deskmail.producers.sink import MailSink  # noqa: E402
from deskmail.workers.config import Config  # noqa: E402
from deskmail.workers.runtime import Runtime  # noqa: E402
from deskmail.workers.secrets import generate_key  # noqa: E402

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
        command = [*deskmail, "backlog", "resume", "--all", "--project", "bench"]
        cpu = CpuWatch(database, control.pid, worker.pid)
        t0 = time.time()
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stdout is not None and run.stderr is not None
        lines = [(time.time() - t0, line.rstrip("\n"), sink.count - before) for line in run.stdout]
        error = run.stderr.read()
        status = run.wait()
        finished = time.time() - t0
        spent = cpu.spent()
        answered = lines[0][0] if lines else finished
        arrived = sink.count - before  # by the command's end
        first = min((at for at in sink.accepted_at.values() if at >= t0), default=None)
        answer = recorded_answer(env["DESKMAIL_DATABASE_URL"]) or {"error": error.strip()}
        print(json.dumps({"mails_in_backlog": backlog, "admission_seconds": round(admitted, 1),
                          "command": " ".join(["deskmail", *command[3:]]), "exit": status,
                          "answer_seconds": round(answered, 2), "done_seconds": round(finished, 2),
                          "lines": [f"{at:.2f}s {text}" for at, text, _ in lines],
                          "first_mail_seconds": round(first - t0, 2) if first else None,
                          "arrived_by_answer": lines[0][2] if lines else arrived, "arrived_by_done": arrived,
                          "touched": answer.get("touched"),
                          "counts": answer.get("counts"), "cpu_seconds": spent,
                          "worker_processes": args.processes, "threads": args.threads}))
        return 0 if status == 0 else 1
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


class CpuWatch:
    """CPU seconds of the bench's process groups between its creation and `spent()`."""

    def __init__(self, database: str, control: int, workers: int) -> None:
        self.database, self.control, self.workers = database, control, workers
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        table = process_table()
        control = tree(table, self.control)
        ports = tcp_ports([p.pid for p in control])
        backends = [p for p in table.values() if p.comm == "postgres" and self.database in cmdline(p.pid)]
        me = table[os.getpid()]
        return {"control_worker": sum(p.own + p.children for p in control),
                "postgres_for_control": sum(p.own for p in backends if backend_client_port(p.pid) in ports),
                "postgres_bench_db": sum(p.own for p in backends),
                "sending_workers": sum(p.own + p.children for p in tree(table, self.workers)),
                "bench_and_sink": me.own, "command": me.children, "machine_busy": machine_busy()}

    def spent(self) -> dict[str, float]:
        """Seconds spent per group since the start (backends that exited meanwhile are not counted)."""
        now = self._read()
        return {group: round(now[group] - self.start.get(group, 0.0), 2) for group in now}


def recorded_answer(database_url: str) -> dict | None:
    """The answer recorded for the one request the command sent."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT r.answer FROM control_requests r JOIN control_sent s USING (request_id) "
                           "WHERE s.action = 'backlog.resume'").fetchone()
    return row[0] if row else None


if __name__ == "__main__":
    sys.exit(main())
