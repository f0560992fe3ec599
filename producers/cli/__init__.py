"""The `deskmail` command: one entry point for admins and developers."""

from __future__ import annotations

import argparse
import sys

import argcomplete

from deskmail.producers.cli import admin, backlog, console, controls, dev, health, mail, problems, requests
from deskmail.producers.cli.context import Context, CommandError
from deskmail.workers.errors import DeskmailError

GROUPS = (dev, mail, admin, backlog, controls, problems, requests, console, health)


def version() -> str:
    """The installed deskmail version."""
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("deskmail")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    top = argparse.ArgumentParser(
        prog="deskmail", description="Send a service desk's mail: publish events, set projects up, "
        "watch and steer limits and the backlog. Settings come from environment variables (see README).")
    top.add_argument("--database-url", help="PostgreSQL URL (env DESKMAIL_DATABASE_URL)")
    top.add_argument("--amqp-url", help="RabbitMQ URL (env DESKMAIL_AMQP_URL)")
    top.add_argument("--control-amqp-url", help="RabbitMQ URL of the control vhost (env DESKMAIL_CONTROL_AMQP_URL)")
    top.add_argument("--version", action="version", version=f"deskmail {version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    completion = commands.add_parser("completion", help="print a shell completion script: "
                                     "eval \"$(deskmail completion bash)\"")
    completion.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh"])
    completion.set_defaults(func=print_completion)
    return top


def print_completion(ctx: Context | None, args: argparse.Namespace) -> int:
    """Print argcomplete's completion script for the deskmail command."""
    sys.stdout.write(argcomplete.shellcode(["deskmail"], shell=args.shell))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one deskmail command; exit 0 on success, 1 on a reported failure, 2 on bad usage."""
    top = parser()
    argcomplete.autocomplete(top)
    args = top.parse_args(argv)
    context: Context | None = None
    try:
        context = Context.from_args(args)
        context.probe = not getattr(args, "no_probe", False)
        return int(args.func(context, args) or 0)
    except CommandError as exc:
        print(f"deskmail: {exc}", file=sys.stderr)
        return exc.status
    except DeskmailError as exc:
        print(f"deskmail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if context is not None:
            context.close()


if __name__ == "__main__":
    sys.exit(main())
