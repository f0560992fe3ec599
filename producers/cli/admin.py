"""Admin commands on projects: settings (set, show, test) and status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deskmail import schemas
from deskmail.schemas.addresses import normalized_address
from deskmail.producers import control
from deskmail.producers.cli.context import CommandError, Context, emit, table
from deskmail.producers.cli.controls import printable, send_control
from deskmail.workers.diagnosis import Status
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
    put.add_argument("--json", action="store_true")
    put.add_argument("--attach", action="store_true", help="with --test: attach a small text file to the test mail")
    put.set_defaults(func=settings_set)
    check = settings.add_parser("test", help="send a test mail through the project's mail service, from a worker "
                                             "of its transport queue, and diagnose each step (exit 0 only when "
                                             "the mail was accepted)")
    check.add_argument("project")
    check.add_argument("--to", help="recipient of the test mail (default: the project's from address)")
    check.add_argument("--attach", action="store_true", help="attach a small text file (proves the attachment path)")
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
    """Validate, optionally test on a worker, and save a project's settings through the control worker, audited."""
    document = load_json(args.file)
    problems = schemas.validate(schemas.SETTINGS, document)
    if problems:
        raise CommandError(f"{args.file}: " + "; ".join(map(str, problems)))
    fields = control.settings_fields(ctx.runtime.box, args.project, document)
    tested = None
    if args.test:
        tested = remote_test(ctx, args.project, recipient(args.to), fields, args.json, args.attach)
        if not tested.get("accepted"):
            if args.json:
                emit({"saved": False, "test": tested}, True)
            raise CommandError(f"the test failed: the settings of project {args.project} were NOT saved")
    answer = send_control(ctx, "settings.set", **fields)
    if not answer.get("ok"):
        if args.json:
            emit({"saved": False, "test": tested, "answer": answer}, True)
        raise CommandError(f"the settings of project {args.project} were NOT saved: "
                           f"{printable(str(answer.get('error')))}")
    emit({"saved": True, "project": args.project, "mail_service": document["mail_service"], "test": tested,
          "answer": answer}, args.json, f"saved the {document['mail_service']} settings of project {args.project}")
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
    """Run the Test action on a worker of the project's transport queue, printing each step as it arrives."""
    to = recipient(args.to)
    if not ctx.store.project_known(args.project):
        raise CommandError(f"unknown project {args.project!r}")
    answer = remote_test(ctx, args.project, to, None, args.json, args.attach)
    if args.json:
        emit(answer, True)
    return 0 if answer.get("accepted") else 1


def remote_test(ctx: Context, project: str, to: str | None, fields: dict | None, as_json: bool,
                attach: bool = False) -> dict:
    """The Test action through a worker (producers.control.run_test), its steps printed as they arrive."""
    shown: list[dict] = []

    def show(answer: dict) -> None:
        if as_json:
            return
        if not shown and answer.get("host"):
            shown.append({})  # the header is out
            tested = answer.get("project", project)
            if tested != project:
                print(f"project {project} has no settings of its own; its mail uses the {tested} project's, "
                      "which are tested here")
            print(f"Test of project {tested} ({answer.get('mail_service')}) on {answer['host']}:")
        for step in (answer.get("steps") or [])[len(shown) - 1 if shown else 0:]:
            shown.append(step)
            print(format_step(step), flush=True)

    answer = control.run_test(ctx.control_publisher, ctx.store, ctx.config.control_key,
                              ctx.config.control_timeout, project, to, fields, show, attach=attach)
    if not answer.get("steps") and not answer.get("host") and not answer.get("ok"):
        raise CommandError(f"the Test action was refused: {printable(str(answer.get('error')))}")
    show(answer)
    if not as_json:
        last = answer["steps"][-1]["name"] if answer.get("steps") else "the start"
        print("Result: the test mail was accepted" if answer.get("accepted") else
              f"Result: FAILED at {last}" + (f" ({printable(str(answer['error']))})" if answer.get("error") else ""))
    return answer


def format_step(step: dict) -> str:
    """One step of a Test action, with what to change under a failed one."""
    mark = "ok    " if step["status"] == Status.PASSED.value else "FAILED"
    line = f"  {mark} {step['name']:<16} {printable(step['detail'])}"
    if step.get("advice"):
        line += f"\n         {'':<16} what to change: {printable(step['advice'])}"
    return line


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
    """The status as a table whose columns fit their content."""
    body = []
    for r in rows:
        c = r["counts"]
        body.append([r["project"], r["state"], f"{r['sent_today']}/{r['per_day'] or '-'}", r["backlog"],
                     r["suspended"], r["failed"], r["ambiguous"], "on" if r["auto_resume"] else "off",
                     f"{c.get('sent', 0)}/{c.get('rejected', 0)}"])
    lines = [table(["PROJECT", "STATE", "TODAY", "BACKLOG", "SUSPENDED", "FAILED", "AMBIGUOUS", "AUTO-RESUME",
                    "SENT/REJECTED"], body, right=(2, 3, 4, 5, 6))]
    lines += [f"{r['project']}: configuration error: {r['config_error']}" for r in rows if r["config_error"]]
    lines.append(f"global: {glob['sent_today']}/{glob['MAIL_LIMIT_PER_DAY_SMTP'] or '-'} today "
                 f"(MAIL_LIMIT_PER_DAY_SMTP), recipients per mail: "
                 f"{glob['RECIPIENTS_LIMIT_PER_MAIL_SMTP'] or '-'} (RECIPIENTS_LIMIT_PER_MAIL_SMTP)")
    return "\n".join(lines)
