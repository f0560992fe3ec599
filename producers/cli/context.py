"""What every command needs: the configuration and lazily opened store and publisher."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Any

from deskmail.producers.publisher import Publisher
from deskmail.workers.config import Config
from deskmail.workers.logs import configure_logging
from deskmail.workers.runtime import Runtime


class CommandError(Exception):
    """A failure the command reports in one line, with its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Context:
    """Built once per command from the environment and the global options."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime = Runtime(config)
        self._publisher: Publisher | None = None
        self._control_publisher: Publisher | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Context":
        """Configuration from the environment, overridden by --database-url / --amqp-url."""
        config = Config.from_env()
        overrides = {k: v for k, v in (("database_url", args.database_url), ("amqp_url", args.amqp_url),
                                       ("control_amqp_url", getattr(args, "control_amqp_url", None))) if v}
        config = dataclasses.replace(config, **overrides)
        configure_logging("WARNING" if config.log_level.upper() == "INFO" else config.log_level)
        return cls(config)

    probe = True  # `db migrate` turns it off: it creates what the probe would miss

    @functools.cached_property
    def store(self):  # noqa: ANN201 - workers.store.Store
        """The store (opens the pool on first use, after a quick probe that names the cause and the fix)."""
        if self.probe:
            probe_database(self.config.database_url)
        return self.runtime.store

    @functools.cached_property
    def publisher(self) -> Publisher:
        """A publisher on DESKMAIL_AMQP_URL."""
        probe_broker(self.config.amqp_url, "DESKMAIL_AMQP_URL")
        self._publisher = Publisher(self.config.amqp_url, self.config.publish_timeout)
        return self._publisher

    @functools.cached_property
    def control_publisher(self) -> Publisher:
        """A publisher on the control vhost (DESKMAIL_CONTROL_AMQP_URL, else DESKMAIL_AMQP_URL)."""
        if self.config.control_url == self.config.amqp_url:
            return self.publisher
        probe_broker(self.config.control_url, "DESKMAIL_CONTROL_AMQP_URL")
        self._control_publisher = Publisher(self.config.control_url, self.config.publish_timeout)
        return self._control_publisher

    def close(self) -> None:
        """Release connections."""
        for publisher in (self._publisher, self._control_publisher):
            if publisher is not None:
                publisher.close()
        self.runtime.close()


PROBE_TIMEOUT = 3  # seconds a command waits for PostgreSQL or RabbitMQ before saying what is wrong


def probe_database(url: str) -> None:
    """Fail within PROBE_TIMEOUT with the cause and the fix when the database is missing, unmigrated or away."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from deskmail.workers.config import redact_url
    params = conninfo_to_dict(url)
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT, autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass('deskmail_migrations') IS NOT NULL").fetchone()
            migrated = row is not None and row[0]
    except psycopg.OperationalError as exc:
        cause = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        if "does not exist" in cause and "database" in cause:
            raise CommandError(f"the database {params.get('dbname')!r} does not exist on {where}: "
                               "run `deskmail db migrate`") from None
        raise CommandError(f"cannot reach PostgreSQL at {where} ({redact_url(url)}): {cause}; is PostgreSQL "
                           "running, and is DESKMAIL_DATABASE_URL right?") from None
    if not migrated:
        raise CommandError(f"the database {params.get('dbname')!r} on {where} has no deskmail schema: "
                           "run `deskmail db migrate`")


def probe_broker(url: str, variable: str) -> None:
    """Fail within PROBE_TIMEOUT with the cause and the fix when RabbitMQ is away or refuses the login."""
    import kombu
    from deskmail.workers.config import redact_url
    connection = kombu.Connection(url, connect_timeout=PROBE_TIMEOUT)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors; all mean the same here
        cause = str(exc).strip() or type(exc).__name__
        raise CommandError(f"cannot reach RabbitMQ at {redact_url(url)}: {cause}; is RabbitMQ running, and is "
                           f"{variable} right (user, password, vhost)?") from None
    finally:
        connection.release()


def table(headers: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()) -> str:
    """A plain table whose columns fit their content (rich), as text; numbers in `right` columns."""
    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.table import Table
    grid = Table(box=SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for i, head in enumerate(headers):
        grid.add_column(head, justify="right" if i in right else "left", no_wrap=True, overflow="fold")
    for row in rows:
        grid.add_row(*[str(cell) for cell in row])
    console = Console(width=100_000, color_system=None, markup=False, emoji=False, highlight=False)
    with console.capture() as captured:
        console.print(grid)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON or the human text."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str, ensure_ascii=False)
        sys.stdout.write("\n")
    elif text is not None:
        print(text)
