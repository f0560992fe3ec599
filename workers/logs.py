"""Logging set-up shared by workers, the scheduler and the CLI: one line per record, secrets never formatted in.

`DESKMAIL_LOG_FORMAT=json` gives one JSON object per line; every line about a mail carries its event id,
project, service, attempt and the host (workers/logcontext.py). Under the `dramatiq` command the CLI has
already configured logging into its pipe before `deskmail.workers.app:setup` runs, so this replaces its handlers'
format and the root level instead of calling basicConfig a second time (which would do nothing).
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

from deskmail.workers.logcontext import ContextFilter, items

NOISY = ("pika", "exchangelib", "urllib3", "msal", "google", "requests_oauthlib", "kombu", "mail.log")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The plain line, with the mail's fields appended in brackets when the record is about one."""

    def format(self, record: logging.LogRecord) -> str:
        """One line; the context goes last so grep by event id works on text logs too."""
        line = super().format(record)
        bound = " ".join(f"{k}={v}" for k, v in items(record))
        return f"{line} [{bound}]" if bound else line


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time, level, logger, message, process, host and the mail's fields."""
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(process)d %(host)s "
                         "%(event_id)s %(project)s %(service)s %(attempt)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log to the existing root handlers (dramatiq's pipe) or stderr, in the chosen format and level.

    Without `fmt`, DESKMAIL_LOG_FORMAT decides (callers that predate the setting pass only the level).
    """
    fmt = (fmt or os.environ.get("DESKMAIL_LOG_FORMAT", "text")).strip().lower()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = json_formatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
