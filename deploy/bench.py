"""`make bench`: end-to-end throughput and latency of deskmail against a plain smtplib baseline.

Both send to the same local Postfix `smtp-sink` in the same run; figures are reported as a
ratio because these machines are shared and noisy. The last line printed is one JSON object.
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


def sample(i: int) -> dict:
    return {"event_id": str(uuid.uuid4()), "project": "bench", "kind": "notification",
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
    with store.pool.connection() as conn:
        target = len(ids) + conn.execute(
            "SELECT count(*) AS n FROM mail WHERE project = 'bench' AND state = 'sent' "
            "AND NOT (event_id = ANY(%s))", (ids,)).fetchone()["n"]
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) AS n FROM mail WHERE project = 'bench' AND state = 'sent'"
                             ).fetchone()["n"]
            if n >= target:
                break
            time.sleep(0.5)
        n = conn.execute("SELECT count(*) AS n FROM mail WHERE state = 'sent' AND event_id = ANY(%s)",
                         (ids,)).fetchone()["n"]
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
    demo.start(f"bench-workers-{processes}", str(BIN / "dramatiq"), "workers.app:setup", "--processes",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="events in the throughput run")
    parser.add_argument("--latency-events", type=int, default=400)
    parser.add_argument("--latency-rate", type=float, default=50.0, help="events/s in the latency run")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--scale", default="", help="also measure with these worker process counts, e.g. 1,2,4")
    parser.add_argument("--scale-events", type=int, default=5000, help="events per --scale run")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="workers serve metrics on this port; a scrape is printed after the throughput run")
    args = parser.parse_args()

    demo = Demo()
    demo.env["DESKMAIL_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/deskmail_bench"
    demo.reset()
    sink_port = free_port()
    sink = start_sink(sink_port)
    demo.sink_port = sink_port
    if args.metrics_port:
        demo.env["DESKMAIL_METRICS_PORT"] = str(args.metrics_port)
    from workers.config import Config
    from workers.store import Store, open_pool
    from producers.publisher import Publisher
    config = Config.from_env(demo.env)
    store = Store(open_pool(config.database_url, 4))
    try:
        # The machine's speed drifts within minutes: the baseline runs before and after the
        # throughput run, and the ratio uses their mean.
        base_before = baseline(sink_port, min(args.n, 5000))
        print(f"baseline: stdlib EmailMessage + smtplib, one process, one connection: {base_before:.0f} mails/s")
        doc = {"mail_service": "smtp", "from_address": "bench@desk.example", "from_name": "Bench Desk",
               "smtp": {"host": "127.0.0.1", "port": sink_port, "security": "none", "auth": "none"}}
        (demo_dir := ROOT / "var" / "demo").mkdir(parents=True, exist_ok=True)
        (demo_dir / "bench.json").write_text(json.dumps(doc))
        demo.cli("settings", "set", "bench", "--file", str(demo_dir / "bench.json"))
        demo.start("bench-workers", str(BIN / "dramatiq"), "workers.app:setup", "--processes", "2",
                   "--threads", str(args.threads))
        time.sleep(3)
        factory = lambda: Publisher(config.amqp_url, config.publish_timeout)  # noqa: E731
        warm = [sample(i) for i in range(200)]
        publish_all(factory, warm)
        wait_sent(store, [e["event_id"] for e in warm], 120)

        events = [sample(i) for i in range(args.n)]
        started = time.time()
        publish_all(factory, events)
        published = time.time()
        ids = [e["event_id"] for e in events]
        wait_sent(store, ids, 1800)
        last = max(s for _, s in sent_times(store, ids))
        throughput = args.n / (last - started)
        print(f"deskmail end to end: {args.n} mails in {last - started:.1f} s = {throughput:.0f} mails/s "
              f"(publishing took {published - started:.1f} s)")
        if args.metrics_port:
            print("metrics scrape of the workers after the throughput run:")
            print("\n".join(f"  {line}" for line in scrape_summary(args.metrics_port)))

        base_after = baseline(sink_port, min(args.n, 5000))
        base = (base_before + base_after) / 2
        print(f"baseline again after the throughput run: {base_after:.0f} mails/s (mean {base:.0f})")

        light = [sample(i) for i in range(args.latency_events)]
        with factory() as pub:
            for ev in light:
                ev["created_at"] = datetime.now(timezone.utc).isoformat()
                pub.publish(ev)
                time.sleep(1 / args.latency_rate)
        wait_sent(store, [e["event_id"] for e in light], 120)
        lat = sorted((s - c) * 1000 for c, s in sent_times(store, [e["event_id"] for e in light]))
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
        print(f"latency publish -> accepted at {args.latency_rate:.0f} events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        ratio = throughput / base
        print(f"ratio end-to-end / baseline: {ratio:.2f}")
        scale: dict[str, float] = {}
        for processes in [int(p) for p in args.scale.split(",") if p.strip()]:
            scale[str(processes)] = round(scale_run(demo, factory, store, processes, args.threads,
                                                    args.scale_events), 1)
            print(f"{processes} worker process(es): {scale[str(processes)]:.0f} mails/s "
                  f"({args.scale_events} events, {args.threads} threads each)")
        print(json.dumps({"n": args.n, "baseline_mails_per_s": round(base, 1),
                          "baseline_before": round(base_before, 1), "baseline_after": round(base_after, 1),
                          "deskmail_mails_per_s": round(throughput, 1), "ratio": round(ratio, 3),
                          "latency_p50_ms": round(p50, 1), "latency_p99_ms": round(p99, 1),
                          "worker_processes": 2, "threads_per_process": args.threads,
                          **({"mails_per_s_by_processes": scale} if scale else {})}))
    finally:
        demo.stop_all()
        os.killpg(sink.pid, signal.SIGTERM)
        store.pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
