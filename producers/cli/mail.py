"""`deskmail mail show`: what became of one event, with its attempt history."""

from __future__ import annotations

import argparse
import dataclasses
import uuid

from deskmail.producers.cli.context import CommandError, Context, emit

SHOWN = ("state", "reason", "detail", "project", "kind", "subject", "recipients", "mail_service", "message_id",
         "attempts", "takeovers", "duplicate_risk", "refused", "next_attempt_at", "created_at", "received_at",
         "claimed_at", "claimed_by", "lease_until", "sent_at", "updated_at")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `mail show`."""
    mail = commands.add_parser("mail", help="one mail's state").add_subparsers(dest="sub", required=True)
    show = mail.add_parser("show", help="state, reason and timestamps of an event")
    show.add_argument("event_id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=show_mail)


def parse_id(text: str) -> uuid.UUID:
    """An event id from the command line, or a clear error."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CommandError(f"{text!r} is not an event id (a UUID)", status=2) from None


def show_mail(ctx: Context, args: argparse.Namespace) -> int:
    """Print one mail's state, reason and timestamps."""
    mail = ctx.store.get_mail(parse_id(args.event_id))
    if mail is None:
        raise CommandError(f"no mail with event id {args.event_id}")
    data = {k: v for k, v in dataclasses.asdict(mail).items() if k in SHOWN or k == "event_id"}
    history = [dataclasses.asdict(a) for a in ctx.store.attempts_of(mail.event_id)]
    data["attempt_history"] = history
    flag = "  (a second copy may exist: sent again after a worker was lost inside the DATA window)" \
        if mail.duplicate_risk else ""
    lines = [f"{mail.event_id}  {mail.state}{flag}"] + [
        f"  {key:<16}{data[key]}" for key in SHOWN[1:] if data.get(key) not in (None, {}, [], False)]
    lines += ["  attempts:"] if history else []
    lines += [f"    #{a['attempt']} {a['started_at']:%Y-%m-%d %H:%M:%S} {a['worker']}  {a['outcome']}"
              f"{' (in DATA)' if a['phase'] == 'data' else ''}: {a['detail'] or ''}" for a in history]
    emit(data, args.json, "\n".join(lines))
    return 0
