"""The one point of an exchange after which a mail may have been accepted: the start of DATA.

Every transport calls `before_data()` right before it hands the message over (SMTP's DATA, the
EWS CreateItem or Graph sendMail request). The delivery pipeline installs the hook that records
the phase in the ledger, under the worker's lease; a hook that raises (lease taken over, database
unreachable) stops the transport before anything can have left.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

_hook: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("deskmail_before_data",
                                                                               default=None)


def before_data() -> None:
    """Called by a transport right before the message is handed over; may raise TransportFailure."""
    hook = _hook.get()
    if hook is not None:
        hook()


@contextlib.contextmanager
def watching(hook: Callable[[], None]) -> Iterator[None]:
    """Install `hook` as before_data() for the exchange run in this block."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
