"""The `deskmail` command: one entry point for admins and developers."""

from __future__ import annotations

import argparse
import sys

from producers.cli import admin, backlog, console, controls, dev, health, mail, problems
from producers.cli.context import Context, CommandError
from workers.errors import DeskmailError

GROUPS = (dev, mail, admin, backlog, controls, problems, console, health)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    top = argparse.ArgumentParser(
        prog="deskmail", description="Send a service desk's mail: publish events, set projects up, "
        "watch and steer limits and the backlog. Settings come from environment variables (see README).")
    top.add_argument("--database-url", help="PostgreSQL URL (env DESKMAIL_DATABASE_URL)")
    top.add_argument("--amqp-url", help="RabbitMQ URL (env DESKMAIL_AMQP_URL)")
    top.add_argument("--control-amqp-url", help="RabbitMQ URL of the control vhost (env DESKMAIL_CONTROL_AMQP_URL)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one deskmail command; exit 0 on success, 1 on a reported failure, 2 on bad usage."""
    args = parser().parse_args(argv)
    context = Context.from_args(args)
    try:
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
        context.close()


if __name__ == "__main__":
    sys.exit(main())
