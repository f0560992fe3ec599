"""`deskmail failed` and `deskmail ambiguous`: the mails an operator must look at, and what to do with them.

Failed mails (a permanent refusal, a configuration error, retries given up) can be retried once the
cause is fixed; ambiguous mails (no answer after the end of DATA) can be resent with the same
Message-ID, or closed once the admin checked they were delivered. Every action is a control message,
applied by a control worker and audited.
"""

from __future__ import annotations

import argparse

from deskmail.producers.cli.context import Context, emit, table
from deskmail.producers.cli.controls import _selection, known_project, printable, run_control
from deskmail.workers.constants import State

ACTIONS = {
    State.FAILED: (("retry", "send the selected mails again (after fixing the cause); counted in today's total"),),
    State.AMBIGUOUS: (("resend", "send again with the same Message-ID (the receiver may fold two copies)"),
                      ("close", "record that you checked the mail was delivered (it becomes sent)")),
}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `failed list/retry` and `ambiguous list/resend/close`."""
    for state, actions in ACTIONS.items():
        group = commands.add_parser(state.value, help=f"{state.value} mails: list them and act on them")
        subs = group.add_subparsers(dest="sub", required=True)
        listing = subs.add_parser("list", help=f"{state.value} mails in arrival order (paged with --after)")
        listing.add_argument("--project")
        listing.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
        listing.add_argument("--after", type=int, default=0, help="show rows after this sequence number")
        listing.add_argument("--json", action="store_true")
        listing.set_defaults(func=list_mails, state=state)
        for name, help_ in actions:
            sub = subs.add_parser(name, help=help_)
            _selection(sub, allow_all=True)
            sub.set_defaults(func=run_control, action=f"{state.value}.{name}")
    register_rejected(commands)


def list_mails(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of failed or ambiguous mails, with why."""
    if args.project:
        known_project(ctx, args.project)
    rows = ctx.store.list_state(args.state, project=args.project, after=args.after,
                                limit=max(1, min(args.limit, 10_000)))
    text = table(["SEQ", "EVENT ID", "PROJECT", "ARRIVED", "REASON", "DETAIL"],
                 [[r["seq"], r["event_id"], r["project"] or "-", f"{r['received_at']:%Y-%m-%d %H:%M:%S}",
                   r["reason"] or "-", printable(r["detail"] or "")] for r in rows], right=(0,))
    if rows and len(rows) == args.limit:
        text += f"\n(more: --after {rows[-1]['seq']})"
    emit(rows, args.json, text if rows else f"no {args.state} mails")
    return 0


def register_rejected(commands: argparse._SubParsersAction) -> None:
    """Add `rejected list`."""
    group = commands.add_parser("rejected", help="events refused as invalid, kept with the reason")
    listing = group.add_subparsers(dest="sub", required=True).add_parser(
        "list", help="rejected events of every project (unknown ones too), in arrival order")
    listing.add_argument("--project", help="only this project's (any name: a rejected event may name one that "
                         "does not exist)")
    listing.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    listing.add_argument("--after", type=int, default=0, help="show rows after this sequence number")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_rejected)


def list_rejected(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of rejected events with the reason."""
    rows = ctx.store.list_rejected(args.project, args.after, max(1, min(args.limit, 10_000)))
    text = table(["SEQ", "EVENT ID", "PROJECT", "ARRIVED", "REASON", "SIZE", "DETAIL"],
                 [[r["seq"], r["event_id"], printable(r["project"] or "-"), f"{r['received_at']:%Y-%m-%d %H:%M:%S}",
                   r["reason"] or "-", r["raw_size"] if r["raw_size"] is not None else "-",
                   printable((r["detail"] or "")[:200])] for r in rows], right=(0, 5))
    if rows and len(rows) == args.limit:
        text += f"\n(more: --after {rows[-1]['seq']})"
    emit(rows, args.json, text if rows else "no rejected events")
    return 0
