"""`deskmail healthcheck`: is this deskmail able to send? One line per check, an exit status per cause."""

from __future__ import annotations

import argparse
import dataclasses

from deskmail.producers.cli.context import Context, emit
from deskmail.workers import health


def register(commands: argparse._SubParsersAction) -> None:
    """Add the healthcheck command."""
    cmd = commands.add_parser(
        "healthcheck", help="check database (reachable, migrated), broker, queue consumers and the scheduler's "
        "heartbeat; exit 0 when healthy, else 3 database unreachable, 4 not migrated, 5 broker unreachable, "
        "6 a queue without consumer, 7 scheduler heartbeat stale")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--queue", action="append", metavar="QUEUE",
                     help="a queue that must have a consumer (repeatable; default: deskmail.admit, "
                     "deskmail.control and the transport queue of every mail service a project uses)")
    cmd.add_argument("--no-consumers", action="store_true", help="skip the consumer check")
    cmd.add_argument("--no-scheduler", action="store_true", help="skip the scheduler heartbeat check")
    cmd.add_argument("--timeout", type=float, help="seconds to wait for each service (DESKMAIL_HEALTH_TIMEOUT)")
    cmd.set_defaults(func=healthcheck)


def healthcheck(ctx: Context, args: argparse.Namespace) -> int:
    """Run the checks and report; the exit status names the most basic failure."""
    config = ctx.config if args.timeout is None else dataclasses.replace(ctx.config, health_timeout=args.timeout)
    report = health.run(config, queues=args.queue, consumers=not args.no_consumers,
                        heartbeat=not args.no_scheduler)
    lines = [f"  {'ok' if c.ok else 'FAILED':6} {c.name:11} {c.detail}" for c in report.checks]
    verdict = "healthy" if report.ok else f"UNHEALTHY: {report.cause.name.lower().replace('_', ' ')}"
    emit(report.as_dict(), args.json, "\n".join([*lines, f"Result: {verdict}"]))
    return int(report.cause)
