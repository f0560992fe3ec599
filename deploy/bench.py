"""`make bench`: deskmail end to end against a plain smtplib loop and django-post_office.

All three send to the same local Postfix `smtp-sink` in the same run; figures are reported as
ratios because these machines are shared and noisy. Besides throughput the run measures a run
cut in two by a daily limit, publish -> accepted latency, and the drain of a large backlog;
`--profile` adds CPU-ms per mail per process group, `--soak N` instead watches worker memory
over N mails. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "deploy"))
from demo import Demo, free_port  # noqa: E402
from bench_proc import CpuProfile, rss_mib, tree, process_table  # noqa: E402

VAR = ROOT / "var" / "bench"
# The peer is pinned so that its figure moves only when this line does.
POSTOFFICE_REQUIREMENTS = ["Django==5.2.19", "django-post_office==3.12.0", "psycopg[binary]==3.3.9"]


def smtp_sink_binary() -> str:
    found = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None)
    if not found:
        raise SystemExit("smtp-sink not found: run `bash deploy/install-smtp-sink.sh`")
    return found


def start_sink(port: int) -> subprocess.Popen:
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([smtp_sink_binary(), *user, f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


def sample(i: int, project: str = "bench") -> dict:
    return {"event_id": str(uuid.uuid4()), "project": project, "kind": "notification",
            "to": [f"user{i}@customer.example"], "cc": ["agent@desk.example"],
            "subject": f"[#{i}] Ticket updated", "text": f"Hello,\n\nticket #{i} has changed.\n\n-- desk\n"}


def baseline(port: int, n: int) -> float:
    """Mails/s of a single-process loop: stdlib EmailMessage built and sent over one connection."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    for i in range(n):
        ev = sample(i)
        msg = EmailMessage()
        msg["From"] = "Bench Desk <bench@desk.example>"
        msg["To"] = ", ".join(ev["to"])
        msg["Cc"] = ", ".join(ev["cc"])
        msg["Subject"] = ev["subject"]
        msg["Message-ID"] = f"<{ev['event_id']}@desk.example>"
        msg.set_content(ev["text"])
        smtp.send_message(msg)
    elapsed = time.perf_counter() - started
    smtp.quit()
    return n / elapsed


def publish_all(publisher_factory, events: list[dict], threads: int = 2, batch: int = 1000) -> None:
    """Publish as a busy service desk would: batches with pipelined confirms, from a few threads."""
    chunks = [events[i::threads] for i in range(threads)]

    def run(chunk: list[dict]) -> None:
        with publisher_factory() as pub:
            for start in range(0, len(chunk), batch):
                pub.publish_many(chunk[start:start + batch])

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def wait_sent(store, ids: list[str], timeout: float) -> None:
    """Wait until every mail of ids is sent, polling cheaply so the harness does not load PostgreSQL.

    Each bench phase runs after the previous one has finished, so counting the project's sent
    mails through the (project, state) index is enough; the ids are checked once at the end.
    """
    deadline = time.monotonic() + timeout

    def count(query: str, *params) -> int:
        # A connection per query: the pool shuts one held past its client deadline (45 s).
        with store.pool.connection() as conn:
            return conn.execute(query, params).fetchone()["n"]

    target = len(ids) + count("SELECT count(*) AS n FROM mail WHERE project = 'bench' AND state = 'sent' "
                              "AND NOT (event_id = ANY(%s))", ids)
    while time.monotonic() < deadline:
        if count("SELECT count(*) AS n FROM mail WHERE project = 'bench' AND state = 'sent'") >= target:
            break
        time.sleep(0.5)
    n = count("SELECT count(*) AS n FROM mail WHERE state = 'sent' AND event_id = ANY(%s)", ids)
    if n != len(ids):
        raise SystemExit(f"only {n} of {len(ids)} mails were sent within {timeout} s")


def sent_times(store, ids: list[str]) -> list[tuple[float, float]]:
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT created_at, sent_at FROM mail WHERE event_id = ANY(%s)", (ids,)).fetchall()
    return [(r["created_at"].timestamp(), r["sent_at"].timestamp()) for r in rows]


def scale_run(demo, factory, store, processes: int, threads: int, n: int) -> float:
    """Mails/s end to end with `processes` worker processes (the workers of the previous run stopped first)."""
    demo.stop_all()
    demo.procs.clear()
    demo.start(f"bench-workers-{processes}", str(BIN / "dramatiq"), "deskmail.workers.app:setup", "--processes",
               str(processes), "--threads", str(threads))
    time.sleep(3)
    warm = [sample(i) for i in range(200)]
    publish_all(factory, warm)
    wait_sent(store, [e["event_id"] for e in warm], 120)
    events = [sample(i) for i in range(n)]
    started = time.time()
    publish_all(factory, events)
    ids = [e["event_id"] for e in events]
    wait_sent(store, ids, 1800)
    return n / (max(s for _, s in sent_times(store, ids)) - started)


def scrape_summary(port: int) -> list[str]:
    """The deskmail_ samples of the workers' metrics endpoint (outcome counters, send latency)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = ("deskmail_mail_outcomes_total", "deskmail_admissions_total", "deskmail_send_duration_seconds_count",
              "deskmail_send_duration_seconds_sum", "deskmail_quota_used", "deskmail_ledger_up")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def state_counts(store, project: str) -> dict[str, int]:
    """How many of a project's mails are in each state."""
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT state, count(*) AS n FROM mail WHERE project = %s GROUP BY state",
                            (project,)).fetchall()
    return {r["state"]: r["n"] for r in rows}


def wait_states(store, project: str, done, timeout: float, every: float = 1.0) -> dict[str, int]:
    """Poll a project's state counts until done(counts) or the timeout; returns the last counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = state_counts(store, project)
        if done(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(every)


def smtp_settings(demo: Demo, project: str, sink_port: int, per_day: int | None = None) -> None:
    """Point a project at the sink (with a daily limit when given)."""
    doc = {"mail_service": "smtp", "from_address": "bench@desk.example", "from_name": "Bench Desk",
           "time_zone": "UTC",
           "smtp": {"host": "127.0.0.1", "port": sink_port, "security": "none", "auth": "none"}}
    if per_day:
        doc["limits"] = {"per_day": per_day}
    path = ROOT / "var" / "demo" / f"{project}.json"
    path.write_text(json.dumps(doc))
    demo.cli("settings", "set", project, "--file", str(path))


class PrivateServices:
    """A database and a RabbitMQ vhost of this run's own on the shared servers, removed at the end.

    Others' demos and benches on this machine consume the default vhost's queues; a bench
    sharing them would lose events to foreign workers and be slowed by foreign mail.
    """

    def __init__(self, demo: Demo) -> None:
        run = uuid.uuid4().hex[:8]
        self.database_url = f"postgresql://postgres@127.0.0.1:5432/deskmail_bench_{run}"
        self.vhost = f"deskmail-bench-{run}"
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        demo.env["DESKMAIL_DATABASE_URL"] = self.database_url
        demo.env["DESKMAIL_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        demo.env.pop("DESKMAIL_CONTROL_AMQP_URL", None)  # control messages on the same vhost
        self.postoffice_db = f"deskmail_bench_postoffice_{run}"

    def close(self) -> None:
        """Drop the database and delete the vhost."""
        recreate_database(self.database_url, self.database_url.rsplit("/", 1)[1], drop_only=True)
        rabbitmqctl("delete_vhost", self.vhost)


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")


# -- django-post_office: the Python mailer a Django shop would pick, in its own virtualenv -----------

def postoffice_python() -> Path:
    """The python of the bench's post_office virtualenv, created and installed once and then reused."""
    venv = VAR / "postoffice-venv"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == " ".join(POSTOFFICE_REQUIREMENTS):
        return venv / "bin" / "python"
    print(f"installing {' '.join(POSTOFFICE_REQUIREMENTS)} into {venv} (once; cached for later runs)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *POSTOFFICE_REQUIREMENTS],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip install {' '.join(POSTOFFICE_REQUIREMENTS)} failed: {done.stderr.strip()[-2000:]}")
    stamp.write_text(" ".join(POSTOFFICE_REQUIREMENTS))
    return venv / "bin" / "python"


def recreate_database(url: str, name: str, drop_only: bool = False) -> None:
    """Drop the database `name` on the server of url, and create it again unless drop_only."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def post_office(database_url: str, database: str, sink_port: int, n: int, processes: int, batch: int) -> dict:
    """django-post_office end to end: n `mail.send` calls (queued), then `send_queued_mail -p P`.

    Runs deploy/bench_postoffice in the post_office virtualenv against a database of its own,
    which is dropped afterwards; returns the command's JSON (timings, statuses) plus mails/s.
    """
    python = postoffice_python()
    from psycopg.conninfo import conninfo_to_dict
    server = conninfo_to_dict(database_url)
    env = {**os.environ, "BENCH_PO_DATABASE": database, "BENCH_PO_HOST": server.get("host", "127.0.0.1"),
           "BENCH_PO_PORT": str(server.get("port", 5432)), "BENCH_PO_SMTP_PORT": str(sink_port),
           "BENCH_PO_BATCH_SIZE": str(batch)}
    manage = [str(python), str(ROOT / "deploy" / "bench_postoffice" / "manage.py")]
    recreate_database(database_url, database)
    try:
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, timeout=300)
        done = subprocess.run([*manage, "bench_post_office", str(n), "--processes", str(processes),
                               "--lockfile", str(VAR / "post_office")], env=env, capture_output=True, text=True,
                              timeout=3600)
    finally:
        recreate_database(database_url, database, drop_only=True)
    if done.returncode != 0:
        raise SystemExit(f"django-post_office run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["mails_per_s"] = n / (result["done"] - result["started"])
    return result


# -- deskmail phases beyond the throughput run -------------------------------------------------------

def daily_limit_run(demo: Demo, store, factory, sink_port: int, n: int) -> dict:
    """n mails into a project whose daily limit is n/2: exactly the limit sent, the rest in the backlog."""
    project, limit = "bench_limit", n // 2
    smtp_settings(demo, project, sink_port, per_day=limit)
    events = [sample(i, project) for i in range(n)]
    started = time.time()
    publish_all(factory, events)
    counts = wait_states(store, project, lambda c: c.get("sent", 0) + c.get("backlog", 0) >= n, 1800, 0.5)
    elapsed = time.time() - started
    exact = counts.get("sent", 0) == limit and counts.get("backlog", 0) == n - limit and sum(counts.values()) == n
    return {"n": n, "per_day": limit, "sent": counts.get("sent", 0), "backlog": counts.get("backlog", 0),
            "states": counts, "exact": exact, "seconds": round(elapsed, 2), "mails_per_s": round(n / elapsed, 1)}


def latency_run(store, factory, events: int, rate: float) -> tuple[float, float, dict]:
    """p50 and p99 publish -> accepted (ms) at `rate` events/s, published one at a time."""
    light = [sample(i) for i in range(events)]
    with factory() as pub:
        next_at = time.monotonic()
        for ev in light:
            ev["created_at"] = datetime.now(timezone.utc).isoformat()
            pub.publish(ev)
            next_at += 1 / rate  # a fixed schedule: the publish's own time does not lower the rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    wait_sent(store, [e["event_id"] for e in light], 120)
    lat = [(s - c) * 1000 for c, s in sent_times(store, [e["event_id"] for e in light])]
    return statistics.median(lat), percentile(lat, 0.99), latency_stages(store, light)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


def latency_stages(store, events: list[dict]) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of each stage the ledger timestamps: publish -> admitted (received_at), admitted ->
    claimed by a transport worker, claimed -> accepted by the server (sent_at)."""
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT created_at, received_at, claimed_at, sent_at FROM mail WHERE event_id = ANY(%s)",
                            ([e["event_id"] for e in events],)).fetchall()
    stages = {"publish_to_admitted": ("created_at", "received_at"),
              "admitted_to_claimed": ("received_at", "claimed_at"),
              "claimed_to_accepted": ("claimed_at", "sent_at")}
    out = {}
    for name, (a, b) in stages.items():
        ms = [(r[b] - r[a]).total_seconds() * 1000 for r in rows if r[a] and r[b]]
        out[name] = {"p50": round(statistics.median(ms), 1), "p99": round(percentile(ms, 0.99), 1)}
    return out


def pause(store, config, factory, project: str) -> None:
    """Pause a project through the control plane, as an admin would."""
    from deskmail.producers import control
    with factory() as pub:
        answer = control.send(pub, store, control.control_message("project.pause", config.control_key,
                                                                  project=project), config.control_timeout)
    if not answer.get("ok"):
        raise SystemExit(f"project.pause {project} refused: {answer}")


def backlog_drain(demo: Demo, store, config, factory, sink_port: int, n: int, profile: CpuProfile) -> dict:
    """n mails admitted into a paused project's backlog, then `deskmail backlog resume --all`.

    Measures when the command answered (its first line) and when it ended, when the first mail is
    accepted by the sink (its `sent_at` in the ledger), and the drain rate from the command to the
    last mail.
    """
    project = "bench_drain"
    smtp_settings(demo, project, sink_port)
    pause(store, config, factory, project)
    events = [sample(i, project) for i in range(n)]
    before = profile.snapshot()
    admit_started = time.time()
    publish_all(factory, events)
    counts = wait_states(store, project, lambda c: c.get("backlog", 0) >= n, 1800)
    admit_seconds = time.time() - admit_started
    profile.record("drain_admit", before, n)
    if counts.get("backlog", 0) != n:
        raise SystemExit(f"backlog drain: only {counts} of {n} mails reached the backlog")
    before = profile.snapshot()
    resume_started = time.time()
    done = subprocess.Popen([str(BIN / "deskmail"), "backlog", "resume", "--all", "--project", project],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo.env)
    assert done.stdout is not None and done.stderr is not None
    answered = [time.time() for _ in done.stdout]  # the answer (accepted, with the count), the final line
    error = done.stderr.read()
    if done.wait(1800) != 0:
        raise SystemExit(f"deskmail backlog resume failed ({done.returncode}): {error.strip()}")
    resume_returned = time.time()
    counts = wait_states(store, project, lambda c: c.get("sent", 0) >= n, 3600)
    profile.record("drain", before, n)
    with store.pool.connection() as conn:
        row = conn.execute("SELECT min(sent_at) AS first, max(sent_at) AS last, count(*) AS n FROM mail "
                           "WHERE project = %s AND state = 'sent'", (project,)).fetchone()
    if row["n"] != n:
        raise SystemExit(f"backlog drain: {counts} after resume, expected {n} sent")
    first, last = row["first"].timestamp(), row["last"].timestamp()
    return {"n": n, "admit_seconds": round(admit_seconds, 2),
            "resume_answer_seconds": round((answered[0] if answered else resume_returned) - resume_started, 2),
            "resume_command_seconds": round(resume_returned - resume_started, 2),
            "first_mail_after_s": round(first - resume_started, 3),
            "drain_seconds": round(last - resume_started, 2),
            "drain_mails_per_s": round(n / (last - resume_started), 1),
            "scheduler_interval_s": float(demo.env.get("DESKMAIL_SCHEDULER_INTERVAL", "5"))}


def soak(store, factory, workers_pid: int, n: int, every: float) -> dict:
    """Publish n mails in batches while sampling every worker process's RSS; returns the series and growth."""
    with store.pool.connection() as conn:
        target = n + conn.execute("SELECT count(*) AS n FROM mail WHERE project = 'bench' AND state = 'sent'"
                                  ).fetchone()["n"]

    def feed() -> None:
        # Publish ahead of delivery by at most 20,000 so the shared broker never holds the whole soak.
        for start in range(0, n, 10_000):
            while state_counts(store, "bench").get("sent", 0) - (target - n) < start - 20_000:
                time.sleep(1)
            publish_all(factory, [sample(i) for i in range(start, min(n, start + 10_000))])

    feeder = threading.Thread(target=feed, daemon=True)
    started = time.time()
    feeder.start()
    series: list[dict] = []
    while True:
        pids = [p.pid for p in tree(process_table(), workers_pid)]
        sent = state_counts(store, "bench").get("sent", 0)
        series.append({"t": round(time.time() - started, 1), "sent": sent - (target - n),
                       "rss_mib": {str(pid): round(rss_mib(pid) or 0.0, 1) for pid in pids}})
        print(f"  t={series[-1]['t']:>7.1f}s sent={series[-1]['sent']:>8}  RSS MiB: "
              + " ".join(f"{pid}={v:.1f}" for pid, v in series[-1]["rss_mib"].items()), flush=True)
        if sent >= target or time.time() - started > 6 * 3600:
            break
        time.sleep(every)
    feeder.join()
    growth, per_100k = rss_growth(series)
    return {"n": n, "seconds": round(time.time() - started, 1), "dramatiq_main_pid": workers_pid,
            "samples": series, "growth_mib": growth, "growth_mib_per_100k_mails": per_100k}


def rss_growth(series: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Per process: RSS at the end minus RSS once 10% of the mails were sent (after warm-up), and per 100k mails."""
    total = series[-1]["sent"] or 1
    warm = next((s for s in series if s["sent"] >= total * 0.1), series[0])
    mails = max(1, series[-1]["sent"] - warm["sent"])
    growth = {pid: round(v - warm["rss_mib"].get(pid, v), 1) for pid, v in series[-1]["rss_mib"].items()}
    return growth, {pid: round(g * 100_000 / mails, 2) for pid, g in growth.items()}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="events in the throughput run")
    parser.add_argument("--latency-events", type=int, default=400)
    parser.add_argument("--latency-rate", type=float, default=100.0, help="events/s in the latency run")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--limit-n", type=int, help="events in the daily-limit run (default: -n)")
    parser.add_argument("--drain-n", type=int, help="mails in the backlog-drain run (default: 5 x -n)")
    parser.add_argument("--postoffice-processes", type=int, default=2, help="send_queued_mail --processes")
    parser.add_argument("--postoffice-batch", type=int, default=1000, help="post_office's BATCH_SIZE")
    parser.add_argument("--skip", nargs="*", default=[], choices=["postoffice", "limit", "latency", "drain"],
                        help="leave these runs out (while developing)")
    parser.add_argument("--profile", action="store_true", help="CPU-ms per mail per process group, per phase")
    parser.add_argument("--soak", type=int, metavar="N", help="only a soak: N mails, worker RSS sampled")
    parser.add_argument("--soak-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--scale", default="", help="also measure with these worker process counts, e.g. 1,2,4")
    parser.add_argument("--scale-events", type=int, default=5000, help="events per --scale run")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="workers serve metrics on this port; a scrape is printed after the throughput run")
    args = parser.parse_args()
    args.limit_n = args.limit_n or args.n
    args.drain_n = args.drain_n or 5 * args.n
    return args


def main() -> int:
    args = arguments()
    failures: list[str] = []
    figures: dict = {}

    demo = Demo()
    run = PrivateServices(demo)
    demo.env.pop("DESKMAIL_SCHEDULER_INTERVAL", None)  # the drain runs with the product's default
    demo.reset()
    VAR.mkdir(parents=True, exist_ok=True)
    sink_port = free_port()
    sink = start_sink(sink_port)
    demo.sink_port = sink_port
    if args.metrics_port:
        demo.env["DESKMAIL_METRICS_PORT"] = str(args.metrics_port)
    from deskmail.workers.config import Config
    from deskmail.workers.store import Store, open_pool
    from deskmail.producers.publisher import Publisher
    config = Config.from_env(demo.env)
    store = Store(open_pool(config.database_url, 4))
    profile = CpuProfile(args.profile)
    profile.watch("smtp-sink", sink.pid)
    try:
        if args.soak:
            return soak_only(demo, store, config, sink_port, args)
        # The machine's speed drifts within minutes: the baseline runs before and after the
        # throughput runs, and the ratios use their mean.
        mark = profile.snapshot()
        base_before = baseline(sink_port, min(args.n, 5000))
        profile.record("baseline", mark, min(args.n, 5000))
        print(f"baseline: stdlib EmailMessage + smtplib, one process, one connection: {base_before:.0f} mails/s")
        if "postoffice" not in args.skip:
            mark = profile.snapshot()
            po = post_office(config.database_url, run.postoffice_db, sink_port, args.n, args.postoffice_processes,
                             args.postoffice_batch)
            profile.record("post_office", mark, args.n)
            print(f"django-post_office end to end: {args.n} mails queued in {po['queue_seconds']:.1f} s, sent by "
                  f"send_queued_mail -p {args.postoffice_processes} in {po['send_seconds']:.1f} s = "
                  f"{po['mails_per_s']:.0f} mails/s (statuses {po['statuses']})")
            if po["statuses"].get("sent") != args.n:
                failures.append(f"post_office sent {po['statuses']} of {args.n}")
            figures["postoffice"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in po.items()
                                     if k not in ("started", "queued", "done")}
        doc = {"mail_service": "smtp", "from_address": "bench@desk.example", "from_name": "Bench Desk",
               "smtp": {"host": "127.0.0.1", "port": sink_port, "security": "none", "auth": "none"}}
        (demo_dir := ROOT / "var" / "demo").mkdir(parents=True, exist_ok=True)
        (demo_dir / "bench.json").write_text(json.dumps(doc))
        # Settings travel as a control message: the workers (which run the control actor) first.
        demo.start("bench-workers", str(BIN / "dramatiq"), "deskmail.workers.app:setup", "--processes", "2",
                   "--threads", str(args.threads))
        profile.watch("workers", demo.procs[-1].pid)
        # As in production, a scheduler runs throughout: without it a mail retried after a
        # transient fault would never be handed back, and the run would wait for it in vain.
        demo.start("bench-scheduler", str(BIN / "deskmail"), "scheduler")
        profile.watch("scheduler", demo.procs[-1].pid)
        time.sleep(3)
        demo.cli("settings", "set", "bench", "--file", str(demo_dir / "bench.json"))
        factory = lambda: Publisher(config.amqp_url, config.publish_timeout)  # noqa: E731
        warm = [sample(i) for i in range(200)]
        publish_all(factory, warm)
        wait_sent(store, [e["event_id"] for e in warm], 120)

        events = [sample(i) for i in range(args.n)]
        mark = profile.snapshot()
        started = time.time()
        publish_all(factory, events)
        published = time.time()
        ids = [e["event_id"] for e in events]
        wait_sent(store, ids, 1800)
        profile.record("deskmail", mark, args.n)
        last = max(s for _, s in sent_times(store, ids))
        throughput = args.n / (last - started)
        print(f"deskmail end to end: {args.n} mails in {last - started:.1f} s = {throughput:.0f} mails/s "
              f"(publishing took {published - started:.1f} s; every mail checked sent in the ledger)")
        if args.metrics_port:
            print("metrics scrape of the workers after the throughput run:")
            print("\n".join(f"  {line}" for line in scrape_summary(args.metrics_port)))

        mark = profile.snapshot()
        base_after = baseline(sink_port, min(args.n, 5000))
        profile.record("baseline_after", mark, min(args.n, 5000))
        base = (base_before + base_after) / 2
        print(f"baseline again after the throughput run: {base_after:.0f} mails/s (mean {base:.0f})")

        if "limit" not in args.skip:
            figures["daily_limit"] = limit = daily_limit_run(demo, store, factory, sink_port, args.limit_n)
            print(f"daily limit {limit['per_day']} over {limit['n']} mails: {limit['sent']} sent, {limit['backlog']} "
                  f"in the backlog ({'exact' if limit['exact'] else 'NOT EXACT: ' + str(limit['states'])}), "
                  f"{limit['mails_per_s']:.0f} mails/s to a final state")
            if not limit["exact"]:
                failures.append(f"daily limit not exact: {limit['states']}")
        if "latency" not in args.skip:
            p50, p99, stages = latency_run(store, factory, args.latency_events, args.latency_rate)
            print(f"latency publish -> accepted at {args.latency_rate:.0f} events/s: p50 {p50:.1f} ms, "
                  f"p99 {p99:.1f} ms; by stage (p50/p99 ms): "
                  + ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in stages.items()))
            figures.update(latency_p50_ms=round(p50, 1), latency_p99_ms=round(p99, 1),
                           latency_rate=args.latency_rate, latency_stages=stages)
        if "drain" not in args.skip:
            figures["drain"] = drain = backlog_drain(demo, store, config, factory, sink_port, args.drain_n, profile)
            drain["vs_steady"] = round(drain["drain_mails_per_s"] / throughput, 3)
            print(f"backlog drain: {drain['n']} mails admitted to a paused project's backlog in "
                  f"{drain['admit_seconds']:.1f} s; `backlog resume --all` answered after "
                  f"{drain['resume_answer_seconds']:.1f} s and ended after {drain['resume_command_seconds']:.1f} s, "
                  f"first mail at the sink after {drain['first_mail_after_s']:.2f} s, all sent after "
                  f"{drain['drain_seconds']:.1f} s = {drain['drain_mails_per_s']:.0f} mails/s, "
                  f"{drain['vs_steady']:.2f}x the steady rate ({throughput:.0f} mails/s)")

        # Last: each scale run stops every process the bench started (the scheduler too).
        scale: dict[str, float] = {}
        for processes in [int(p) for p in args.scale.split(",") if p.strip()]:
            scale[str(processes)] = round(scale_run(demo, factory, store, processes, args.threads,
                                                    args.scale_events), 1)
            print(f"{processes} worker process(es): {scale[str(processes)]:.0f} mails/s "
                  f"({args.scale_events} events, {args.threads} threads each)")
        if scale:
            figures["mails_per_s_by_processes"] = scale

        ratio = throughput / base
        print(f"ratio end-to-end / baseline: {ratio:.2f}")
        if "postoffice" in figures:
            figures["ratio_vs_postoffice"] = round(throughput / po["mails_per_s"], 3)
            figures["postoffice_vs_baseline"] = round(po["mails_per_s"] / base, 3)
            print(f"ratio end-to-end / django-post_office: {figures['ratio_vs_postoffice']:.2f} "
                  f"(post_office / baseline: {figures['postoffice_vs_baseline']:.2f})")
        if args.profile:
            print(profile.table())
            figures["cpu_ms_per_mail"] = profile.phases
        for failure in failures:
            print(f"FAILED: {failure}")
        print(json.dumps({"n": args.n, "baseline_mails_per_s": round(base, 1),
                          "baseline_before": round(base_before, 1), "baseline_after": round(base_after, 1),
                          "deskmail_mails_per_s": round(throughput, 1), "ratio": round(ratio, 3),
                          "postoffice_mails_per_s": round(po["mails_per_s"], 1) if "postoffice" in figures else None,
                          **figures, "worker_processes": 2, "threads_per_process": args.threads,
                          "ok": not failures}))
    finally:
        demo.stop_all()
        os.killpg(sink.pid, signal.SIGTERM)
        store.pool.close()
        run.close()
    return 1 if failures else 0


def soak_only(demo: Demo, store, config, sink_port: int, args: argparse.Namespace) -> int:
    """`--soak N`: the workers' memory over N mails, no other run (not part of CI)."""
    from deskmail.producers.publisher import Publisher
    demo.start("bench-workers", str(BIN / "dramatiq"), "deskmail.workers.app:setup", "--processes", "2",
               "--threads", str(args.threads))
    time.sleep(3)
    smtp_settings(demo, "bench", sink_port)
    factory = lambda: Publisher(config.amqp_url, config.publish_timeout)  # noqa: E731
    print(f"soak: {args.soak} mails, worker RSS every {args.soak_every:.0f} s")
    result = soak(store, factory, demo.procs[-1].pid, args.soak, args.soak_every)
    growth = result["growth_mib"]
    print(f"soak: {args.soak} mails in {result['seconds']:.0f} s; RSS growth after warm-up (MiB; pid "
          f"{result['dramatiq_main_pid']} is dramatiq's main process, the others its workers): "
          + ", ".join(f"pid {pid}: {v:+.1f} ({result['growth_mib_per_100k_mails'][pid]:+.2f} per 100k mails)"
                      for pid, v in growth.items()))
    print(json.dumps({"soak": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
