"""Logging set-up shared by workers and the CLI: one line per record, secrets never formatted in."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    """Plain single-line logs on stderr; libraries that echo protocol lines are kept quiet."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    for noisy in ("pika", "exchangelib", "urllib3", "msal", "google", "requests_oauthlib", "kombu", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
