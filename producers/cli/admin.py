"""Admin commands on projects: settings (set, show, test) and status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import schemas
from schemas.addresses import normalized_address
from producers import control
from producers.cli.context import CommandError, Context, emit
from producers.cli.controls import printable, send_control
from workers.diagnosis import Checkup, Status
from workers.selftest import self_test
DEFAULT_PROJECT = "default"


def register(commands: argparse._SubParsersAction) -> None:
    """Add `settings` and `status`."""
    settings = commands.add_parser("settings", help="a project's mail settings").add_subparsers(
        dest="sub", required=True)
    put = settings.add_parser("set", help="validate and save settings from a JSON file (the product's Update)")
    put.add_argument("project")
    put.add_argument("--file", type=Path, required=True, help="settings JSON (schemas/project-settings.v1.json)")
    put.add_argument("--test", action="store_true", help="send the self-test mail first; save only if it is accepted")
    put.add_argument("--to", help="with --test: the test mail's recipient (default: the from address)")
    put.set_defaults(func=settings_set)
    check = settings.add_parser("test", help="send a test mail through the project's mail service and diagnose "
                                             "each step (exit 0 only when the mail was accepted)")
    check.add_argument("project")
    check.add_argument("--to", help="recipient of the test mail (default: the project's from address)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=settings_test)
    show = settings.add_parser("show", help="a project's settings, secrets redacted")
    show.add_argument("project")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=settings_show)
    register_status(commands)


def load_json(path: Path) -> dict:
    """A JSON object from a file, or a clear error naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(document, dict):
        raise CommandError(f"{path}: (root): must be a JSON object")
    return document


def settings_set(ctx: Context, args: argparse.Namespace) -> int:
    """Validate, optionally test, and save a project's settings through the control worker, audited."""
    document = load_json(args.file)
    problems = schemas.validate(schemas.SETTINGS, document)
    if problems:
        raise CommandError(f"{args.file}: " + "; ".join(map(str, problems)))
    if args.test:
        checkup = self_test(ctx.runtime, args.project, recipient(args.to), document)
        print(format_checkup(args.project, document["mail_service"], checkup))
        if not checkup.accepted:
            raise CommandError(f"the test failed: the settings of project {args.project} were NOT saved")
    answer = send_control(ctx, "settings.set", **control.settings_fields(ctx.runtime.box, args.project, document))
    if not answer.get("ok"):
        raise CommandError(f"the settings of project {args.project} were NOT saved: "
                           f"{printable(str(answer.get('error')))}")
    print(f"saved the {document['mail_service']} settings of project {args.project}")
    return 0


def recipient(address: str | None) -> str | None:
    """The --to address, checked and normalised."""
    if address is None:
        return None
    try:
        return normalized_address(address)
    except ValueError as exc:
        raise CommandError(f"--to: {exc}", 2) from exc


def settings_test(ctx: Context, args: argparse.Namespace) -> int:
    """Send the self-test mail with a project's saved settings, printing each step."""
    to = recipient(args.to)
    project = ctx.store.get_project(args.project)
    if project is None or project.settings is None:
        project = ctx.store.get_project(DEFAULT_PROJECT)
        if project is None or project.settings is None:
            raise CommandError(f"project {args.project!r} has no mail settings, and there is no default project")
        if not args.json:
            print(f"project {args.project} has no settings of its own; its mail uses the {DEFAULT_PROJECT} "
                  "project's, which are tested here")
    checkup = self_test(ctx.runtime, project.key, to)
    emit({"project": project.key, "mail_service": project.mail_service, **checkup.as_dict()}, args.json,
         format_checkup(project.key, project.mail_service, checkup))
    return 0 if checkup.accepted else 1


def format_checkup(project: str, service: str, checkup: Checkup) -> str:
    """The steps of a Test action, one per line, with what to change under a failed one."""
    lines = [f"Test of project {project} ({service}):"]
    for step in checkup.steps:
        mark = "ok    " if step.status is Status.PASSED else "FAILED"
        lines.append(f"  {mark} {step.name:<16} {step.detail}")
        if step.advice:
            lines.append(f"         {'':<16} what to change: {step.advice}")
    last = checkup.steps[-1] if checkup.steps else None
    lines.append("Result: the test mail was accepted" if checkup.accepted else
                 f"Result: FAILED at {last.name if last else 'the start'}")
    return "\n".join(lines)


def settings_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print a project's settings with secrets redacted."""
    emit(ctx.runtime.settings.shown(args.project), True)  # JSON is also the readable form here
    return 0


def register_status(commands: argparse._SubParsersAction) -> None:
    """Add `status`."""
    status = commands.add_parser("status", help="per project: active or paused, today's count, backlog")
    status.add_argument("--project")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=show_status)


def project_status(ctx: Context, project) -> dict:  # noqa: ANN001 - workers.records.Project
    """One project's status as a dict."""
    counts = ctx.store.project_counts(project.key)
    return {
        "project": project.key, "mail_service": project.mail_service or "(default project's)",
        "state": f"paused ({project.paused_reason})" if project.paused_reason else "active",
        "sent_today": ctx.store.sent_today(project.key, project.time_zone),
        "per_day": project.per_day or None, "recipients_per_mail": project.recipients_per_mail or None,
        "time_zone": project.time_zone, "auto_resume": project.auto_resume,
        "backlog": counts.get("backlog", 0), "suspended": counts.get("suspended", 0),
        "failed": counts.get("failed", 0), "ambiguous": counts.get("ambiguous", 0),
        "counts": counts, "config_error": project.config_error,
    }


def show_status(ctx: Context, args: argparse.Namespace) -> int:
    """Print each project's status and the global limits."""
    projects = [p for p in ctx.store.list_projects() if args.project in (None, p.key)]
    if args.project and not projects:
        raise CommandError(f"unknown project {args.project!r}")
    rows = [project_status(ctx, p) for p in projects]
    limits = ctx.store.global_limits()
    glob = {"MAIL_LIMIT_PER_DAY_SMTP": limits.per_day or None,
            "RECIPIENTS_LIMIT_PER_MAIL_SMTP": limits.recipients_per_mail or None,
            "sent_today": ctx.store.sent_today("*", limits.time_zone), "time_zone": limits.time_zone}
    emit({"projects": rows, "global": glob}, args.json, format_status(rows, glob))
    return 0


def format_status(rows: list[dict], glob: dict) -> str:
    """The status as an aligned table."""
    head = (f"{'PROJECT':<14}{'STATE':<28}{'TODAY':>12}{'BACKLOG':>9}{'SUSPENDED':>11}{'FAILED':>8}"
            f"{'AMBIGUOUS':>11}  AUTO-RESUME  SENT/REJECTED")
    lines = [head]
    for r in rows:
        today = f"{r['sent_today']}/{r['per_day'] or '-'}"
        c = r["counts"]
        lines.append(f"{r['project']:<14}{r['state']:<28}{today:>12}{r['backlog']:>9}{r['suspended']:>11}"
                     f"{r['failed']:>8}{r['ambiguous']:>11}  {'on' if r['auto_resume'] else 'off':<13}"
                     f"{c.get('sent', 0)}/{c.get('rejected', 0)}")
        if r["config_error"]:
            lines.append(f"  configuration error: {r['config_error']}")
    lines.append(f"global: {glob['sent_today']}/{glob['MAIL_LIMIT_PER_DAY_SMTP'] or '-'} today "
                 f"(MAIL_LIMIT_PER_DAY_SMTP), recipients per mail: "
                 f"{glob['RECIPIENTS_LIMIT_PER_MAIL_SMTP'] or '-'} (RECIPIENTS_LIMIT_PER_MAIL_SMTP)")
    return "\n".join(lines)
