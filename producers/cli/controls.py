"""Admin commands that travel as control messages: resume, suspend, limits; and their audit trail."""

from __future__ import annotations

import argparse
import contextlib
import sys
import unicodedata
from typing import Callable, Iterator

from rich.console import Console

from deskmail.producers import control
from deskmail.producers.cli.context import CommandError, Context, emit, table
from deskmail.workers.constants import State


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
                        ("unpause", "send again (mail already in the backlog waits there until resumed, "
                                    "or auto resume takes it)")):
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
        parser.add_argument("--dry-run", action="store_true", help="with --all: say how many mails of which "
                            "project it would touch, and change nothing")
        parser.add_argument("--yes", action="store_true", help="with --all and no --project: do not ask for "
                            "confirmation")
    parser.add_argument("--project")
    parser.add_argument("--ids", dest="with_ids", action="store_true",
                        help="keep the ids of the mails moved (page them with `deskmail control ids REQUEST_ID`)")
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


ACCEPTED = {"backlog.resume": "resuming", "backlog.suspend": "suspending", "suspended.resume": "resuming",
            "failed.retry": "retrying", "ambiguous.resend": "resending", "ambiguous.close": "closing"}
"""How the answer to a bulk action over a whole list names what is under way once it is accepted."""


def send_control(ctx: Context, action: str, announce: bool | None = None, **fields) -> dict:
    """Send one control action to the control vhost and return the worker's answer (a progress bar on a
    terminal while a bulk action runs). With `announce`, a bulk action over a whole list is answered on
    stdout as soon as the worker accepted it (its selection fixed and counted), before its final line."""
    message = control.control_message(action, ctx.config.control_key, **fields)
    told = False

    def progress(answer: dict) -> None:
        nonlocal told
        if announce and not told and answer.get("accepted"):
            print(accepted_line(action, message, answer), flush=True)
            told = True
        report(answer)

    with progress_bar(f"{action}") as report:
        try:
            answer = control.send(ctx.control_publisher, ctx.store, message, ctx.config.control_timeout, progress)
        except control.NoAnswer as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            if told:  # accepted: it goes on without us
                print(f"deskmail: stopped following request {message['request_id']}; it goes on (its result: "
                      "`deskmail audit`)", file=sys.stderr)
            raise
    if announce and not told and answer.get("ok") and answer.get("accepted"):
        print(accepted_line(action, message, answer))  # finished before the command saw it running
    return {"request_id": message["request_id"], **answer}


def accepted_line(action: str, message: dict, answer: dict) -> str:
    """The answer to an accepted bulk action: how many mails it takes, and that it completes by itself."""
    project = f" of project {printable(message['project'])}" if message.get("project") else ""
    return (f"{ACCEPTED.get(action, action)} {answer.get('total', 0)} mail(s){project}: accepted as request "
            f"{message['request_id']}, it completes even if this command or the control worker stops")


def print_answer(answer: dict, as_json: bool) -> int:
    """Print a control answer: a summary on stdout, and on stderr why each id that was not done was not.

    0 only when the request did all it was asked: a refusal, an unknown id, an id of another project
    or not in that state makes it 1.
    """
    done = {"resumed", "suspended", "closed"}
    missed = {k: v for k, v in (answer.get("outcomes") or {}).items() if v not in done}
    if as_json:
        emit(answer, True)
    elif answer.get("ok"):
        counts = ", ".join(f"{n} {printable(str(what))}" for what, n in sorted((answer.get("counts") or {}).items()))
        print(f"done: {answer.get('touched', 0)} mail(s)" + (f" ({counts})" if counts and missed else ""))
    for key, why in missed.items():
        print(f"deskmail: {key}: {printable(str(why))}", file=sys.stderr)
    if not answer.get("ok"):
        print(("deskmail: REFUSED: " if answer.get("refused") else "deskmail: refused: ")
              + printable(str(answer.get("error"))), file=sys.stderr)
        return 1
    if answer.get("ids_kept") and not as_json:
        print(f"ids: deskmail control ids {answer.get('request_id', '')}".rstrip())
    return 1 if missed else 0


def run_control(ctx: Context, args: argparse.Namespace) -> int:
    """Send a bulk action (resume, suspend, retry, resend, close) and print the answer."""
    use_all = getattr(args, "all", False)
    if bool(args.ids) == bool(use_all):
        raise CommandError("give event ids, or --all (not both)", status=2)
    if args.project:
        known_project(ctx, args.project)
    state = args.action.split(".")[0]
    if use_all and (getattr(args, "dry_run", False) or not args.project):
        counts = ctx.store.console_mail_count(state, {"project": args.project})
        total = sum(counts.values())
        if args.dry_run:
            emit({"action": args.action, "dry_run": True, "projects": counts, "total": total}, args.json,
                 "\n".join([f"{args.action} --all would touch {total} mail(s)"] +
                           [f"  {p}: {n}" for p, n in counts.items()]))
            return 0
        if not args.yes and not confirm(f"{args.action} --all touches {total} mail(s) of {len(counts)} project(s) "
                                        f"({', '.join(f'{p}: {n}' for p, n in counts.items()) or 'none'})"):
            raise CommandError("not confirmed; nothing was sent (give --yes, or --project P)")
    answer = send_control(ctx, args.action, announce=use_all and not args.json, ids=args.ids or None,
                          all=use_all or None, project=args.project, with_ids=args.with_ids or None)
    return print_answer(answer, args.json)


def confirm(question: str) -> bool:
    """Ask on the terminal; without one (a script), the answer is no: scripts say --yes."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question}. Go on? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def known_project(ctx: Context, project: str) -> None:
    """Refuse a project deskmail has never heard of (no settings, limits or mail)."""
    if not ctx.store.project_known(project):
        raise CommandError(f"unknown project {project!r}")


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[dict], None]]:
    """A progress bar on stderr while a running request reports progress (only on a terminal)."""
    if not sys.stderr.isatty():
        yield lambda answer: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def report(answer: dict) -> None:
            if "total" in answer:
                bar.update(task, total=answer["total"] or None, completed=answer.get("done", 0))
            elif "steps" in answer:
                bar.update(task, description=f"{label}: {len(answer['steps'])} step(s)")
        yield report


def set_limits(ctx: Context, args: argparse.Namespace) -> int:
    """Send a limits.set command."""
    if args.per_day is None and args.recipients_per_mail is None:
        raise CommandError("give --per-day and/or --recipients-per-mail", status=2)
    if args.project:
        known_project(ctx, args.project)
    fields = {"per_day": args.per_day, "recipients_per_mail": args.recipients_per_mail}
    return print_answer(send_control(ctx, "limits.set", project=args.project, **{"global": args.glob or None},
                               **fields), args.json)


def set_auto_resume(ctx: Context, args: argparse.Namespace) -> int:
    """Send an auto_resume.set command."""
    known_project(ctx, args.project)
    return print_answer(send_control(ctx, "auto_resume.set", project=args.project, enabled=args.state == "on"),
                         args.json)


def set_pause(ctx: Context, args: argparse.Namespace) -> int:
    """Send a project.pause or project.unpause command."""
    known_project(ctx, args.project)
    return print_answer(send_control(ctx, args.action, project=args.project), args.json)


def show_limits(ctx: Context, args: argparse.Namespace) -> int:
    """Print the limits and today's counts."""
    if args.project:
        known_project(ctx, args.project)
    glob = ctx.store.global_limits()
    rows = [{"project": p.key, "per_day": p.per_day or None, "recipients_per_mail": p.recipients_per_mail or None,
             "sent_today": ctx.store.sent_today(p.key, p.time_zone), "time_zone": p.time_zone}
            for p in ctx.store.list_projects() if args.project in (None, p.key)]
    sent_today = ctx.store.sent_today("*", glob.time_zone)
    data = {"global": {"MAIL_LIMIT_PER_DAY_SMTP": glob.per_day or None,
                       "RECIPIENTS_LIMIT_PER_MAIL_SMTP": glob.recipients_per_mail or None,
                       "sent_today": sent_today}, "projects": rows}
    text = [f"global: per day {glob.per_day or '-'} (MAIL_LIMIT_PER_DAY_SMTP), recipients per mail "
            f"{glob.recipients_per_mail or '-'} (RECIPIENTS_LIMIT_PER_MAIL_SMTP), sent today {sent_today}"]
    text += [f"{r['project']}: per day {r['per_day'] or '-'}, recipients per mail {r['recipients_per_mail'] or '-'}, "
             f"sent today {r['sent_today']} ({r['time_zone']})" for r in rows]
    emit(data, args.json, "\n".join(text))
    return 0


def list_suspended(ctx: Context, args: argparse.Namespace) -> int:
    """Print one page of suspended mails."""
    if args.project:
        known_project(ctx, args.project)
    rows = ctx.store.list_state(State.SUSPENDED, project=args.project, after=args.after,
                                limit=max(1, min(args.limit, 10_000)))
    text = table(["SEQ", "EVENT ID", "PROJECT", "ARRIVED", "SUBJECT"],
                 [[r["seq"], r["event_id"], r["project"], f"{r['received_at']:%Y-%m-%d %H:%M:%S}",
                   printable(r["subject"] or "")] for r in rows], right=(0,))
    if rows and len(rows) == args.limit:
        text += f"\n(more: --after {rows[-1]['seq']})"
    emit(rows, args.json, text if rows else "no suspended mails")
    return 0


def _failure(result: dict) -> str:
    return ("REFUSED " if result.get("refused") else "") + printable(str(result.get("error")))


def show_audit(ctx: Context, args: argparse.Namespace) -> int:
    """Print the newest audit entries."""
    if args.project:
        known_project(ctx, args.project)
    rows = ctx.store.audit(args.project, args.limit)
    text = table(["AT", "ACTOR", "ACTION", "PROJECT", "TOUCHED", "RESULT"],
                 [[f"{r['at']:%Y-%m-%d %H:%M:%S}", printable(r["actor"]), printable(r["action"]),
                   printable(r["project"] or "-"), r["touched"],
                   "ok" if r["result"].get("ok") else _failure(r["result"])] for r in rows], right=(4,))
    emit(rows, args.json, text if rows else "no audit entries")
    return 0
