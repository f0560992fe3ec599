"""The control actor: admin commands that change what gets sent (filled in with the backlog controls)."""

from __future__ import annotations

import logging
from typing import Callable

import dramatiq

from workers.constants import Queue
from workers.runtime import Runtime
from workers.store import Store

log = logging.getLogger(__name__)


def declare_control_actor(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare the `deskmail.control` actor."""


def auto_resume_pass(store: Store, enqueue: Callable) -> Callable[[], dict[str, int]]:
    """The scheduler's auto-resume step."""
    return lambda: {}
