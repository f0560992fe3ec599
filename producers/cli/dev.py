"""Set-up and developer commands: db, broker, keys, publish, sink, scheduler."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deskmail.producers.cli.context import CommandError, Context, emit
from deskmail.producers.publisher import publish_lines
from deskmail.workers.constants import Queue
from deskmail.workers.secrets import generate_key


def register(commands: argparse._SubParsersAction) -> None:
    """Add the set-up commands."""
    db = commands.add_parser("db", help="database schema").add_subparsers(dest="sub", required=True)
    mig = db.add_parser("migrate", help="create the database if missing and apply migrations (safe to repeat)")
    mig.add_argument("--json", action="store_true")
    mig.set_defaults(func=migrate, no_probe=True)
    broker = commands.add_parser("broker", help="RabbitMQ topology").add_subparsers(dest="sub", required=True)
    dec = broker.add_parser("declare", help="declare deskmail's queues (as the workers do)")
    dec.add_argument("--json", action="store_true")
    dec.set_defaults(func=declare)
    keys = commands.add_parser("keys", help="secret keys").add_subparsers(dest="sub", required=True)
    gen = keys.add_parser("generate", help="print a new key for DESKMAIL_SECRET_KEYS")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=keys_generate)
    rot = keys.add_parser("rotate", help="re-encrypt every stored secret under the first key of the workers' "
                          "DESKMAIL_SECRET_KEYS (a control action)")
    rot.add_argument("--json", action="store_true")
    rot.set_defaults(func=keys_rotate)
    pub = commands.add_parser("publish", help="publish events, one JSON object per line; prints their ids")
    pub.add_argument("file", nargs="?", default="-", help="file of JSON lines, or - for standard input")
    pub.add_argument("--json", action="store_true", help="one JSON object per line: {line, event_id} or {line, error}")
    pub.set_defaults(func=publish)
    sink = commands.add_parser("sink", help="run a local SMTP sink writing each mail as an .eml file")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=2525)
    sink.add_argument("--dir", type=Path, default=Path("var/mail"), help="folder for .eml files")
    sink.add_argument("--json", action="store_true", help="say where it listens as one JSON object")
    sink.set_defaults(func=run_sink)
    sched = commands.add_parser("scheduler", help="run the scheduler: retries, recovery, auto resume "
                                "(interval: DESKMAIL_SCHEDULER_INTERVAL); safe to run twice")
    sched.add_argument("--once", action="store_true", help="one pass, then exit; prints what each step did")
    sched.add_argument("--json", action="store_true", help="with --once: the pass as one JSON object")
    sched.set_defaults(func=run_scheduler)


def ensure_database(url: str) -> bool:
    """Create the database named in url if it does not exist; True if it was created."""
    params = conninfo_to_dict(url)
    name = str(params.get("dbname") or "postgres")
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
        return True


def migrate(ctx: Context, args: argparse.Namespace) -> int:
    """Create the database if needed, apply migrations and the global limits from the environment."""
    try:
        created = ensure_database(ctx.config.database_url)
    except psycopg.Error as exc:
        cause = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise CommandError(f"cannot reach PostgreSQL to create the database: {cause}; is PostgreSQL running, and "
                           "is DESKMAIL_DATABASE_URL right?") from None
    applied = ctx.store.migrate()
    limits = {k: v for k, v in (("per_day", ctx.config.global_per_day),
                                ("recipients_per_mail", ctx.config.global_recipients_per_mail)) if v is not None}
    if limits:
        ctx.store.set_global_limits(**limits)
    lines = (["created the database"] if created else []) + [
        f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date"]
    lines += [f"global limits from the environment: {limits}"] if limits else []
    emit({"created_database": created, "applied": applied, "global_limits": limits}, args.json, "\n".join(lines))
    return 0


def declare(ctx: Context, args: argparse.Namespace) -> int:
    """Declare every deskmail queue with the workers' own arguments (the control queue on its vhost)."""
    from deskmail.workers.app import build_broker
    for url, queues in ((ctx.config.amqp_url, [q for q in Queue if q != Queue.CONTROL]),
                        (ctx.config.control_url, [Queue.CONTROL])):
        broker = build_broker(ctx.config, url)
        try:
            for queue in queues:
                broker.declare_queue(queue, ensure=True)
        finally:
            broker.close()
    emit({"declared": list(Queue)}, args.json, "declared: " + ", ".join(Queue))
    return 0


def keys_generate(ctx: Context, args: argparse.Namespace) -> int:
    """Print a new Fernet key."""
    key = generate_key()
    emit({"key": key}, args.json, key)
    return 0


def keys_rotate(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the control worker to re-encrypt every project's secrets under its newest key, audited."""
    from deskmail.producers.cli.controls import printable, send_control
    answer = send_control(ctx, "keys.rotate")
    if not answer.get("ok"):
        raise CommandError(f"nothing was re-encrypted: {printable(str(answer.get('error')))}")
    emit(answer, args.json, f"re-encrypted the secrets of {len(answer.get('rotated', []))} project(s) under the "
         "first key of the workers' DESKMAIL_SECRET_KEYS")
    return 0


def publish(ctx: Context, args: argparse.Namespace) -> int:
    """Publish JSON lines; print one event id per good line, report bad ones with line and field."""
    # Bytes that are not UTF-8 become lone surrogates, which the schema refuses per line, field named.
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="surrogateescape")
    bad = 0
    with stream, _file_progress(stream, args.file) as advance:
        for number, event_id, error in publish_lines(ctx.publisher, stream):
            if error:
                bad += 1
                if args.json:
                    print(json.dumps({"line": number, "error": error}, ensure_ascii=False), flush=True)
                else:
                    print(f"line {number}: {error}", file=sys.stderr)
            else:
                print(json.dumps({"line": number, "event_id": event_id}) if args.json else event_id, flush=True)
            advance()
    return 1 if bad else 0


@contextlib.contextmanager
def _file_progress(stream, name: str) -> Iterator[Callable[[], None]]:  # noqa: ANN001 - a text file
    """A progress bar over a file's bytes on a terminal (stderr); standard input has no size to show."""
    if name == "-" or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    size = os.fstat(stream.fileno()).st_size
    with Progress(TextColumn(f"publishing {name}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("publish", total=size)
        yield lambda: bar.update(task, completed=os.lseek(stream.fileno(), 0, os.SEEK_CUR))


def run_sink(ctx: Context, args: argparse.Namespace) -> int:
    """Run the local SMTP sink until interrupted."""
    from deskmail.producers import sink
    sink.run(args.host, args.port, args.dir, args.json)
    return 0


def run_scheduler(ctx: Context, args: argparse.Namespace) -> int:
    """Run scheduler passes until interrupted (or once)."""
    from deskmail.workers.scheduler import Scheduler
    scheduler = Scheduler.for_config(ctx.config, ctx.runtime)
    if args.once:
        done = scheduler.tick()
        emit(done, args.json, "scheduler pass: " + (", ".join(f"{k} {v}" for k, v in sorted(done.items()))
                                                     or "nothing to do"))
    else:
        scheduler.run_forever()
    return 0
