"""`deskmail console` (the admin console) and `deskmail console-user` (its accounts)."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys

from deskmail.producers.cli.context import CommandError, Context, emit
from deskmail.producers.console.auth import ROLES, hash_password

MIN_PASSWORD = 12


def register(commands: argparse._SubParsersAction) -> None:
    """Add `console` and `console-user add/remove/passwd/list`."""
    console = commands.add_parser("console", help="serve the admin console (DESKMAIL_CONSOLE_HOST/PORT, "
                                                  "TLS and single sign-on from DESKMAIL_CONSOLE_*)")
    console.add_argument("--host", help="listen address (env DESKMAIL_CONSOLE_HOST, default 127.0.0.1)")
    console.add_argument("--port", type=int, help="port (env DESKMAIL_CONSOLE_PORT, default 8025)")
    console.add_argument("--json", action="store_true", help="say where it listens as one JSON object")
    console.set_defaults(func=run_console)
    users = commands.add_parser("console-user", help="accounts of the admin console").add_subparsers(
        dest="sub", required=True)
    add = users.add_parser("add", help="create an account (asks for the password, or reads it from stdin)")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, required=True, help="admin: may change things; viewer: may look")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--sso-only", action="store_true", help="no password: logs in with single sign-on only")
    add.set_defaults(func=add_user)
    add.add_argument("--json", action="store_true", help="machine-readable output")
    remove = users.add_parser("remove", help="delete an account and end its sessions")
    remove.add_argument("username")
    remove.add_argument("--json", action="store_true", help="machine-readable output")
    remove.set_defaults(func=remove_user)
    passwd = users.add_parser("passwd", help="set a new password (ends the account's sessions)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument("--json", action="store_true", help="machine-readable output")
    passwd.set_defaults(func=set_password)
    listing = users.add_parser("list", help="accounts and roles")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_users)


def run_console(ctx: Context, args: argparse.Namespace) -> int:
    """Serve the console until interrupted."""
    from deskmail.producers.console.app import serve
    from deskmail.producers.console.config import ConsoleConfig, UnsafeListen
    console = ConsoleConfig.from_env()
    console = dataclasses.replace(console, **{k: v for k, v in (("host", args.host), ("port", args.port)) if v})
    if args.json:
        emit({"host": console.host, "port": console.port}, True)
    try:
        serve(ctx.runtime, console)
    except UnsafeListen as exc:
        raise CommandError(str(exc), status=2) from exc
    return 0


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ", status=2)
    if len(password) < MIN_PASSWORD:
        raise CommandError(f"the password must have at least {MIN_PASSWORD} characters", status=2)
    return password


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def add_user(ctx: Context, args: argparse.Namespace) -> int:
    """Create a console account."""
    hashed = None if args.sso_only else hash_password(_password(args.password_stdin))
    if not ctx.store.add_console_user(args.username, hashed, args.role):
        raise CommandError(f"console user {args.username!r} exists already (use passwd, or remove it first)")
    ctx.store.record_console_audit(_actor(), "console_user.add", {"username": args.username, "role": args.role}, True)
    emit({"username": args.username, "role": args.role, "added": True}, args.json,
         f"added console user {args.username} ({args.role})")
    return 0


def remove_user(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a console account."""
    if not ctx.store.remove_console_user(args.username):
        raise CommandError(f"no console user {args.username!r}")
    ctx.store.record_console_audit(_actor(), "console_user.remove", {"username": args.username}, True)
    emit({"username": args.username, "removed": True}, args.json, f"removed console user {args.username}")
    return 0


def set_password(ctx: Context, args: argparse.Namespace) -> int:
    """Set a console account's password."""
    if ctx.store.console_user(args.username) is None:
        raise CommandError(f"no console user {args.username!r}")
    ctx.store.set_console_password(args.username, hash_password(_password(args.password_stdin)))
    ctx.store.record_console_audit(_actor(), "console_user.passwd", {"username": args.username}, True)
    emit({"username": args.username, "password_set": True, "sessions_ended": True}, args.json,
         f"new password set for {args.username}; its sessions were ended")
    return 0


def list_users(ctx: Context, args: argparse.Namespace) -> int:
    """Print the console accounts."""
    rows = [{"username": u.username, "role": u.role, "password": u.password_hash is not None,
             "created_at": u.created_at} for u in ctx.store.console_users()]
    emit(rows, args.json, "\n".join(f"{r['username']:<32} {r['role']:<7} {'password' if r['password'] else 'sso only'}"
                                    for r in rows) or "no console users")
    return 0
