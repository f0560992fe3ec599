"""Keeps tracebacks out of broker messages: Retries would store them there, and they may quote values."""

from __future__ import annotations

import dramatiq


class DropTracebacks(dramatiq.Middleware):
    """Removes the `traceback` option Retries adds before a message goes back to the broker."""

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        """Strip the traceback; the worker's log (redacted) keeps the error."""
        message.options.pop("traceback", None)
