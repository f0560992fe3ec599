"""`deskmail backlog list`: the mails waiting because a limit was hit, in arrival order."""

from __future__ import annotations

import argparse

from deskmail.producers.cli.context import Context, emit, table
from deskmail.producers.cli.controls import add_backlog_actions, known_project, printable
from deskmail.workers.constants import Reason, State


def register(commands: argparse._SubParsersAction) -> None:
    """Add `backlog list`, `backlog resume` and `backlog suspend`."""
    backlog = commands.add_parser("backlog", help="mails waiting over a limit").add_subparsers(
        dest="sub", required=True)
    listing = backlog.add_parser("list", help="backlog mails in arrival order (paged with --after)")
    listing.add_argument("--project")
    listing.add_argument("--reason", choices=[r.value for r in Reason])
    listing.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    listing.add_argument("--after", type=int, default=0, help="show rows after this sequence number")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_backlog)
    add_backlog_actions(backlog)


def list_backlog(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of the backlog."""
    if args.project:
        known_project(ctx, args.project)
    rows = ctx.store.list_state(State.BACKLOG, project=args.project, reason=args.reason, after=args.after,
                                limit=max(1, min(args.limit, 10_000)))
    text = table(["SEQ", "EVENT ID", "PROJECT", "KIND", "RCPT", "ARRIVED", "REASON", "SUBJECT"],
                 [[r["seq"], r["event_id"], r["project"], r["kind"], r["recipients"],
                   f"{r['received_at']:%Y-%m-%d %H:%M:%S}", r["reason"], printable(r["subject"] or "")] for r in rows],
                 right=(0, 4))
    if rows and len(rows) == args.limit:
        text += f"\n(more: --after {rows[-1]['seq']})"
    emit(rows, args.json, text if rows else "the backlog is empty")
    return 0
