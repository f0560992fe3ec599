"""What every command needs: the configuration and lazily opened store and publisher."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Any

from producers.publisher import Publisher
from workers.config import Config
from workers.logs import configure_logging
from workers.runtime import Runtime


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

    @property
    def store(self):  # noqa: ANN201 - workers.store.Store
        """The store (opens the pool on first use)."""
        return self.runtime.store

    @functools.cached_property
    def publisher(self) -> Publisher:
        """A publisher on DESKMAIL_AMQP_URL."""
        self._publisher = Publisher(self.config.amqp_url, self.config.publish_timeout)
        return self._publisher

    @functools.cached_property
    def control_publisher(self) -> Publisher:
        """A publisher on the control vhost (DESKMAIL_CONTROL_AMQP_URL, else DESKMAIL_AMQP_URL)."""
        if self.config.control_url == self.config.amqp_url:
            return self.publisher
        self._control_publisher = Publisher(self.config.control_url, self.config.publish_timeout)
        return self._control_publisher

    def close(self) -> None:
        """Release connections."""
        for publisher in (self._publisher, self._control_publisher):
            if publisher is not None:
                publisher.close()
        self.runtime.close()


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON or the human text."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str, ensure_ascii=False)
        sys.stdout.write("\n")
    elif text is not None:
        print(text)
