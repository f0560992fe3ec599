"""`make demo`: deskmail end to end on this machine, then a summary; leaves nothing running.

Services (RabbitMQ, PostgreSQL) are made sure of by the Makefile; this script creates a demo
database, starts a local SMTP sink, two worker processes and the scheduler, configures two
projects, publishes a few hundred events (some over a daily limit), waits, and reports. The admin
console runs alongside (its address and a demo login are printed); from a terminal it stays up until
Enter is pressed.
"""

from __future__ import annotations

import json
import os
import secrets
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VAR = ROOT / "var" / "demo"
FINAL = {"sent", "backlog", "rejected", "failed", "ambiguous", "suspended"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_env() -> dict[str, str]:
    from cryptography.fernet import Fernet
    env = dict(os.environ)
    env.setdefault("DESKMAIL_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/deskmail_demo")
    env.setdefault("DESKMAIL_SECRET_KEYS", Fernet.generate_key().decode())
    env.setdefault("DESKMAIL_CONTROL_KEY", secrets.token_hex(32))  # workers and the command sign alike
    env["DESKMAIL_OUTBOUND_ALLOW"] = "127.0.0.0/8"  # the sink runs on loopback
    env["DESKMAIL_SCHEDULER_INTERVAL"] = "1"
    env["DESKMAIL_LOG_LEVEL"] = env.get("DESKMAIL_LOG_LEVEL", "WARNING")
    return env


class Demo:
    def __init__(self) -> None:
        self.env = demo_env()
        self.procs: list[subprocess.Popen] = []
        self.sink_port = free_port()
        self.mail_dir = VAR / "mail"

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run([str(BIN / "deskmail"), *args], input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=120)
        if check and done.returncode != 0:
            raise SystemExit(f"deskmail {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self, name: str, *argv: str) -> None:
        log = open(VAR / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=ROOT, start_new_session=True))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def reset(self) -> None:
        shutil.rmtree(VAR, ignore_errors=True)
        VAR.mkdir(parents=True)
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        url = self.env["DESKMAIL_DATABASE_URL"]
        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(self.cli("db", "migrate").strip())
        print(self.cli("broker", "declare").strip())
        purge_queues(self.env.get("DESKMAIL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))

    def settings(self, project: str, per_day: int | None) -> None:
        doc = {"mail_service": "smtp", "from_address": f"{project}@desk.example", "from_name": f"{project} desk",
               "time_zone": "Europe/Berlin",
               "smtp": {"host": "127.0.0.1", "port": self.sink_port, "security": "none", "auth": "none"}}
        if per_day is not None:
            doc["limits"] = {"per_day": per_day, "recipients_per_mail": 10}
        path = VAR / f"{project}.json"
        path.write_text(json.dumps(doc))
        print(self.cli("settings", "set", project, "--file", str(path)).strip())

    def wait_final(self, ids: list[str], timeout: float = 180) -> dict[str, str]:
        from deskmail.workers.config import Config
        from deskmail.workers.store import Store, open_pool
        store = Store(open_pool(Config.from_env(self.env).database_url, 2))
        deadline = time.monotonic() + timeout
        try:
            while True:
                states = {i: (m.state if (m := store.get_mail(i)) else "unknown") for i in ids}
                if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
                    return states
                time.sleep(0.5)
        finally:
            store.pool.close()


def purge_queues(amqp_url: str) -> None:
    import pika
    from deskmail.workers.constants import Queue
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    for queue in Queue:
        channel.queue_purge(queue)
    conn.close()


def sample_events(n_helpdesk: int, n_facilities: int) -> list[dict]:
    rng = random.Random(7)
    events = []
    for project, count in (("helpdesk", n_helpdesk), ("facilities", n_facilities)):
        for i in range(count):
            kind = "record" if i % 5 == 0 else "notification"
            subject = (f"Re: [#{1000 + i}] Printer on floor {rng.randint(1, 9)}" if kind == "record"
                       else f"[#{1000 + i}] Ticket updated: status {rng.choice(['open', 'pending', 'resolved'])}")
            events.append({"project": project, "kind": kind, "to": [f"user{i}@customer.example"],
                           "cc": [f"agent{i % 7}@desk.example"], "subject": subject,
                           "text": f"Hello,\n\nticket #{1000 + i} has changed.\n\n-- {project} desk\n",
                           "record": {"type": "ticket", "id": str(1000 + i)}})
    return events


def main() -> int:
    demo = Demo()
    print("== deskmail demo ==")
    demo.reset()
    demo.start("sink", str(BIN / "deskmail"), "sink", "--port", str(demo.sink_port), "--dir", str(demo.mail_dir))
    demo.start("workers", str(BIN / "dramatiq"), "deskmail.workers.app:setup", "--processes", "2", "--threads", "8")
    demo.start("scheduler", str(BIN / "deskmail"), "scheduler")
    url = start_console(demo)
    try:
        demo.settings("helpdesk", None)
        demo.settings("facilities", 50)
        test_actions(demo)
        events = sample_events(200, 100)
        bad = ['{"project": "helpdesk", "kind": "notification", "to": ["not-an-address"], "subject": "x", "text": "y"}',
               '{"project": "helpdesk", "kind": "notification", "to": ["a@b.example"], "subject": "x", '
               '"text": "y", "headers": {"Bcc": "evil@example.net"}}']
        lines = "\n".join([json.dumps(e) for e in events] + bad) + "\n"
        started = time.monotonic()
        done = subprocess.run([str(BIN / "deskmail"), "publish", "-"], input=lines, capture_output=True,
                              text=True, env=demo.env, timeout=300)
        ids = done.stdout.split()
        print(f"published {len(ids)} events; refused at publish time:")
        for line in done.stderr.strip().splitlines():
            print(f"  {line}")
        states = demo.wait_final(ids)
        elapsed = time.monotonic() - started
        summary(demo, ids, states, elapsed)
        admin_steps(demo, ids)
        forged_steps(demo)
        print(f"\nthe admin console: {url}  (log in as {CONSOLE_LOGIN[0]} / {CONSOLE_LOGIN[1]})")
        if sys.stdin.isatty():
            input("it stays up until you press Enter ")
    finally:
        demo.stop_all()
    print("all demo processes stopped.")
    return 0


CONSOLE_LOGIN = ("demo", "demo-console-password")


def start_console(demo: Demo) -> str:
    """`deskmail console` on a free loopback port with an admin account; returns its address."""
    import urllib.request
    port = free_port()
    demo.env["DESKMAIL_CONSOLE_PORT"] = str(port)
    demo.cli("console-user", "add", CONSOLE_LOGIN[0], "--role", "admin", "--password-stdin",
             stdin=CONSOLE_LOGIN[1] + "\n")
    demo.start("console", str(BIN / "deskmail"), "console")
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "login", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the console did not answer at {url}; see {VAR / 'console.log'}") from None
            time.sleep(0.3)
    print(f"the admin console: {url}  (log in as {CONSOLE_LOGIN[0]} / {CONSOLE_LOGIN[1]})")
    return url


def summary(demo: Demo, ids: list[str], states: dict[str, str], elapsed: float) -> None:
    print(f"\nall {len(ids)} events reached a final state in {elapsed:.1f} s\n")
    print(demo.cli("status"))
    eml = sorted(demo.mail_dir.glob("*.eml"))
    print(f"the sink received {len(eml)} mails, written as .eml files under {demo.mail_dir}")
    if eml:
        print(f"e.g. {eml[0]}")


def shown(demo: Demo, *args: str, check: bool = True) -> str:
    """Run a deskmail command, printing it and its output as an admin would see them."""
    print(f"$ deskmail {' '.join(args)}")
    done = subprocess.run([str(BIN / "deskmail"), *args], capture_output=True, text=True, env=demo.env,
                          timeout=120)
    out = (done.stdout + done.stderr).rstrip()
    print("\n".join("  " + line for line in out.splitlines()))
    if check and done.returncode != 0:
        raise SystemExit(f"deskmail {' '.join(args)} failed ({done.returncode})")
    print(f"  (exit status {done.returncode})")
    return done.stdout


def test_actions(demo: Demo) -> None:
    """The Test action: a self-test mail through a good configuration, and a diagnosis of a broken one."""
    print("\n== the Test action ==")
    shown(demo, "settings", "test", "helpdesk")
    broken = {"mail_service": "smtp", "from_address": "broken@desk.example",
              "smtp": {"host": "127.0.0.1", "port": free_port(), "security": "starttls", "auth": "plain",
                       "username": "broken", "password": "not-shown-anywhere", "timeout_seconds": 5}}
    path = VAR / "broken.json"
    path.write_text(json.dumps(broken))
    shown(demo, "settings", "set", "broken", "--file", str(path), "--test", check=False)


def admin_steps(demo: Demo, ids: list[str]) -> None:
    """Show the backlog controls: list, resume two, suspend one, then auto resume after a raise."""
    def run(*args: str) -> str:
        return shown(demo, *args)

    listing = json.loads(demo.cli("backlog", "list", "--project", "facilities", "--limit", "3", "--json"))
    run("backlog", "list", "--project", "facilities", "--limit", "3")
    first, second, third = (str(r["event_id"]) for r in listing)
    run("backlog", "resume", first, second, "--project", "facilities")
    run("backlog", "suspend", third, "--project", "facilities")
    run("auto-resume", "on", "--project", "facilities")
    run("limits", "set", "--project", "facilities", "--per-day", "120")
    demo.wait_final(ids)
    deadline = time.monotonic() + 60
    while "facilities    active" not in demo.cli("status") and time.monotonic() < deadline:
        time.sleep(0.5)
    run("status")
    run("suspended", "list", "--project", "facilities")
    run("audit", "--limit", "5")
    print(f"the sink now holds {len(list(demo.mail_dir.glob('*.eml')))} mails")


def forged_steps(demo: Demo) -> None:
    """A publisher of events tries to steer: a control action on deskmail.admit and an unsigned one."""
    from deskmail.producers.control import control_message
    from deskmail.producers.publisher import Publisher
    print("\n== only admins steer ==")
    amqp_url = demo.env.get("DESKMAIL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    on_admit = control_message("limits.set", demo.env["DESKMAIL_CONTROL_KEY"], project="facilities", per_day=None,
                               requested_by="intruder\x1b[2J\r\nfaked audit line")
    unsigned = control_message("backlog.resume", "", all=True, requested_by="intruder")
    with Publisher(amqp_url) as publisher:
        for message, queue in ((on_admit, "deskmail.admit"), (unsigned, "deskmail.control")):
            body = json.dumps({"queue_name": queue, "actor_name": "deskmail.control", "args": [message],
                               "kwargs": {}, "options": {}, "message_id": message["request_id"],
                               "message_timestamp": int(time.time() * 1000)}).encode()
            publisher.publish_raw(body, message["request_id"], 9, queue)
    print("published a signed limits.set on deskmail.admit and an unsigned backlog.resume on deskmail.control")
    time.sleep(2)
    shown(demo, "audit", "--limit", "2")
    shown(demo, "limits", "show", "--project", "facilities")


if __name__ == "__main__":
    sys.exit(main())
