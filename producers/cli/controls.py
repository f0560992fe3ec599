"""Admin commands that travel as control messages: resume, suspend, limits; and their audit trail."""

from __future__ import annotations

import argparse
import unicodedata

from producers import control
from producers.cli.context import CommandError, Context, emit
from workers.constants import State


def add_backlog_actions(backlog: argparse._SubParsersAction) -> None:
    """Add `backlog resume` and `backlog suspend`."""
    for name, help_ in (("resume", "send the selected mails now (admin override, counted in the day's total)"),
                        ("suspend", "move the selected mails to Suspended (kept forever)")):
        sub = backlog.add_parser(name, help=help_)
        _selection(sub, allow_all=True)
        sub.set_defaults(func=run_control, action=f"backlog.{name}")


def printable(text: str) -> str:
    """Text written by whoever sent a message, safe for a terminal: control and format characters escaped.

    ESC sequences could rewrite the screen, CR/LF forge audit lines, and bidi overrides reorder them.
    """
    return "".join(ch if ch.isprintable() and unicodedata.category(ch) != "Cf" and ch != "\\"
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def register(commands: argparse._SubParsersAction) -> None:
    """Add suspended list/resume, limits show/set, project pause/unpause, audit."""
    suspended = commands.add_parser("suspended", help="suspended mails, kept forever").add_subparsers(
        dest="sub", required=True)
    listing = suspended.add_parser("list", help="suspended mails in arrival order")
    listing.add_argument("--project")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--after", type=int, default=0)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_suspended)
    resume = suspended.add_parser("resume", help="send suspended mails after all")
    _selection(resume, allow_all=False)
    resume.set_defaults(func=run_control, action="suspended.resume")
    _limits(commands)
    auto = commands.add_parser("auto-resume", help="let the backlog drain by itself once quota is available")
    auto.add_argument("state", choices=["on", "off"])
    auto.add_argument("--project", required=True)
    auto.add_argument("--json", action="store_true")
    auto.set_defaults(func=set_auto_resume)
    project = commands.add_parser("project", help="pause or unpause a project's sending").add_subparsers(
        dest="sub", required=True)
    for name, help_ in (("pause", "stop sending: the project's new mail waits in the backlog"),
                        ("unpause", "send again (mail already in the backlog waits there until resumed, or auto resume takes it)")):
        sub = project.add_parser(name, help=help_)
        sub.add_argument("project")
        sub.add_argument("--json", action="store_true")
        sub.set_defaults(func=set_pause, action=f"project.{name}")
    audit = commands.add_parser("audit", help="who changed what, when, and with what result")
    audit.add_argument("--project")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=show_audit)


def _selection(parser: argparse.ArgumentParser, allow_all: bool) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="event ids")
    if allow_all:
        parser.add_argument("--all", action="store_true", help="every mail in that list (of --project)")
    parser.add_argument("--project")
    parser.add_argument("--json", action="store_true")


def _limits(commands: argparse._SubParsersAction) -> None:
    limits = commands.add_parser("limits", help="mails per day and recipients per mail").add_subparsers(
        dest="sub", required=True)
    show = limits.add_parser("show", help="project and global limits")
    show.add_argument("--project")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_limits)
    put = limits.add_parser("set", help="set limits (0 = no limit); global ones are MAIL_LIMIT_PER_DAY_SMTP "
                            "and RECIPIENTS_LIMIT_PER_MAIL_SMTP")
    scope = put.add_mutually_exclusive_group(required=True)
    scope.add_argument("--project")
    scope.add_argument("--global", dest="glob", action="store_true")
    put.add_argument("--per-day", type=int)
    put.add_argument("--recipients-per-mail", type=int)
    put.add_argument("--json", action="store_true")
    put.set_defaults(func=set_limits)


def send_control(ctx: Context, action: str, **fields) -> dict:
    """Send one control action to the control vhost and return the worker's answer."""
    message = control.control_message(action, ctx.config.control_key, **fields)
    try:
        return control.send(ctx.control_publisher, ctx.store, message, ctx.config.control_timeout)
    except control.NoAnswer as exc:
        raise CommandError(str(exc)) from exc


def print_answer(answer: dict, as_json: bool) -> int:
    """Print a control answer (per id outcomes, then a summary); 0 when it was applied."""
    lines = [f"{k}: {v}" for k, v in (answer.get("outcomes") or {}).items()]
    summary = (f"done: {answer.get('touched', 0)} mail(s)" if answer.get("ok")
               else f"refused: {printable(str(answer.get('error')))}")
    emit(answer, as_json, "\n".join(lines + [summary]))
    return 0 if answer.get("ok") else 1


def run_control(ctx: Context, args: argparse.Namespace) -> int:
    """Send a resume or suspend command and print the answer per id."""
    use_all = getattr(args, "all", False)
    if bool(args.ids) == bool(use_all):
        raise CommandError("give event ids, or --all (not both)", status=2)
    return print_answer(send_control(ctx, args.action, ids=args.ids or None, all=use_all or None,
                               project=args.project), args.json)


def set_limits(ctx: Context, args: argparse.Namespace) -> int:
    """Send a limits.set command."""
    if args.per_day is None and args.recipients_per_mail is None:
        raise CommandError("give --per-day and/or --recipients-per-mail", status=2)
    fields = {"per_day": args.per_day, "recipients_per_mail": args.recipients_per_mail}
    return print_answer(send_control(ctx, "limits.set", project=args.project, **{"global": args.glob or None},
                               **fields), args.json)


def set_auto_resume(ctx: Context, args: argparse.Namespace) -> int:
    """Send an auto_resume.set command."""
    return print_answer(send_control(ctx, "auto_resume.set", project=args.project, enabled=args.state == "on"),
                         args.json)


def set_pause(ctx: Context, args: argparse.Namespace) -> int:
    """Send a project.pause or project.unpause command."""
    return print_answer(send_control(ctx, args.action, project=args.project), args.json)


def show_limits(ctx: Context, args: argparse.Namespace) -> int:
    """Print the limits and today's counts."""
    glob = ctx.store.global_limits()
    rows = [{"project": p.key, "per_day": p.per_day or None, "recipients_per_mail": p.recipients_per_mail or None,
             "sent_today": ctx.store.sent_today(p.key, p.time_zone), "time_zone": p.time_zone}
            for p in ctx.store.list_projects() if args.project in (None, p.key)]
    data = {"global": {"MAIL_LIMIT_PER_DAY_SMTP": glob.per_day or None,
                       "RECIPIENTS_LIMIT_PER_MAIL_SMTP": glob.recipients_per_mail or None,
                       "sent_today": ctx.store.sent_today("*", glob.time_zone)}, "projects": rows}
    text = [f"global: per day {glob.per_day or '-'} (MAIL_LIMIT_PER_DAY_SMTP), recipients per mail "
            f"{glob.recipients_per_mail or '-'} (RECIPIENTS_LIMIT_PER_MAIL_SMTP), sent today "
            f"{data['global']['sent_today']}"]
    text += [f"{r['project']}: per day {r['per_day'] or '-'}, recipients per mail {r['recipients_per_mail'] or '-'}, "
             f"sent today {r['sent_today']} ({r['time_zone']})" for r in rows]
    emit(data, args.json, "\n".join(text))
    return 0


def list_suspended(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of suspended mails."""
    rows = ctx.store.list_state(State.SUSPENDED, project=args.project, after=args.after,
                                limit=max(1, min(args.limit, 10_000)))
    text = [f"{r['seq']:>8}  {r['event_id']!s:<36}  {r['project']:<12} {r['received_at']:%Y-%m-%d %H:%M:%S}  "
            f"{r['subject']}" for r in rows]
    emit(rows, args.json, "\n".join(text) or "no suspended mails")
    return 0


def _failure(result: dict) -> str:
    return ("REFUSED " if result.get("refused") else "") + printable(str(result.get("error")))


def show_audit(ctx: Context, args: argparse.Namespace) -> int:
    """Print the newest audit entries."""
    rows = ctx.store.audit(args.project, args.limit)
    text = [f"{r['at']:%Y-%m-%d %H:%M:%S}  {printable(r['actor']):<24} {printable(r['action']):<18} "
            f"{printable(r['project'] or '-'):<12} touched {r['touched']}  "
            f"{'ok' if r['result'].get('ok') else _failure(r['result'])}" for r in rows]
    emit(rows, args.json, "\n".join(text) or "no audit entries")
    return 0
