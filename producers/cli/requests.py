"""`deskmail control pending/cancel/ids`: control requests nobody answered yet, and what a bulk action moved.

A command that gave up waiting ("no control worker answered") leaves its request queued: a worker
that comes back before DESKMAIL_CONTROL_MAX_AGE still applies it. `pending` lists such requests and
`cancel` takes the request id with a cancellation, audited, so that no worker applies it later.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import uuid

from deskmail.producers.cli.context import CommandError, Context, emit, table
from deskmail.producers.cli.controls import printable


def register(commands: argparse._SubParsersAction) -> None:
    """Add `control pending`, `control cancel` and `control ids`."""
    group = commands.add_parser("control", help="control requests: pending ones, cancel one, the ids a bulk "
                                "action moved").add_subparsers(dest="sub", required=True)
    pending = group.add_parser("pending", help="requests sent but not applied yet (they expire after "
                               "DESKMAIL_CONTROL_MAX_AGE)")
    pending.add_argument("--json", action="store_true")
    pending.set_defaults(func=list_pending)
    cancel = group.add_parser("cancel", help="make sure a pending request is never applied (audited)")
    cancel.add_argument("request_id")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(func=cancel_request)
    ids = group.add_parser("ids", help="the ids a bulk action sent with --ids moved, one page at a time")
    ids.add_argument("request_id")
    ids.add_argument("--after", type=int, default=0, help="show ids after this number")
    ids.add_argument("--limit", type=int, default=1000, help="ids per page (default 1000)")
    ids.add_argument("--json", action="store_true")
    ids.set_defaults(func=list_ids)


def request_id(text: str) -> str:
    """A request id from the command line, or a clear error."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise CommandError(f"{text!r} is not a request id (a UUID)", status=2) from None


def list_pending(ctx: Context, args: argparse.Namespace) -> int:
    """Print the requests no control worker has answered yet."""
    rows = ctx.store.control_pending(ctx.config.control_max_age)
    text = table(["REQUEST ID", "ACTION", "PROJECT", "REQUESTED BY", "SENT", "EXPIRES"],
                 [[str(r["request_id"]), r["action"], r["project"] or "-", printable(r["requested_by"]),
                   f"{r['sent_at']:%Y-%m-%d %H:%M:%S}", f"{r['expires_at']:%H:%M:%S}"] for r in rows])
    emit(rows, args.json, text if rows else "no pending control requests")
    return 0


def cancel_request(ctx: Context, args: argparse.Namespace) -> int:
    """Cancel a pending request; exit 1 when it was applied (or refused) before."""
    rid = request_id(args.request_id)
    answer = ctx.store.cancel_control(rid, f"{getpass.getuser()}@{socket.gethostname()}")
    if answer is None:
        raise CommandError(f"no command sent request {rid}")
    emit(answer, args.json, f"cancelled request {rid}: no worker will apply it" if answer.get("cancelled")
         else None)
    if not answer.get("cancelled"):
        raise CommandError(f"request {rid} was already answered, so it could not be cancelled: "
                           f"{'ok' if answer.get('ok') else printable(str(answer.get('error')))}")
    return 0


def list_ids(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of the ids a bulk action moved."""
    rows = ctx.store.moved_ids(request_id(args.request_id), args.after, max(1, min(args.limit, 10_000)))
    text = "\n".join(str(r["event_id"]) for r in rows)
    if rows and len(rows) == args.limit:
        text += f"\n(more: --after {rows[-1]['n']})"
    emit(rows, args.json, text or "no ids kept for that request (was it sent with --ids?)")
    return 0
