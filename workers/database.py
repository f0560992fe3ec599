"""PostgreSQL connections that fail fast: timeouts, keepalives, a checked pool and a client-side deadline.

A connection whose route froze (packets dropped, or a middlebox that keeps the TCP session open but
never forwards) would otherwise block a worker for as long as the fault lasts: libpq has no
client-side query timeout. Keepalives and TCP_USER_TIMEOUT catch a dead route; the deadline
watchdog catches a silent one by shutting the socket down under the waiting call, which then fails
like any lost connection and is retried by the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any, Iterator

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5          # seconds to open a connection
STATEMENT_TIMEOUT = 30       # seconds PostgreSQL lets one statement run
CLIENT_DEADLINE = 45.0       # seconds a call may wait for PostgreSQL's answer before its socket is shut
RECONNECT_WINDOW = 4.0       # a failing reconnection starts afresh after this, so backoff never grows past ~2 s
CHECK_IDLE_AFTER = 5.0       # a connection idle longer than this is checked before it is handed out
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000} -c idle_in_transaction_session_timeout=60000",
}


class Watchdog:
    """Shuts down the socket of a connection whose call outlived its deadline."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[psycopg.Connection[Any], float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[Any], seconds: float | None) -> Iterator[None]:
        """Watch conn for `seconds` (None: not at all) while the block runs."""
        if seconds is None:
            yield
            return
        self._start()
        with self._lock:
            self._watched[id(conn)] = (conn, time.monotonic() + seconds)
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(id(conn), None)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="deskmail-db-watchdog", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._watched.values() if deadline < now]
            for conn in late:
                _shut(conn)


def _shut(conn: psycopg.Connection[Any]) -> None:
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        log.warning("PostgreSQL did not answer within %.0f s; connection dropped", CLIENT_DEADLINE)
    except (OSError, psycopg.Error):
        pass  # already closed


class GuardedPool(ConnectionPool[psycopg.Connection[DictRow]]):
    """A pool whose connections are checked after idling and whose calls have a deadline."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        self.watchdog = Watchdog()
        self._last_used: dict[int, float] = {}
        super().__init__(conninfo, check=self._check_idle, **kwargs)

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None,
                   deadline: float | None = CLIENT_DEADLINE) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection; the block's calls fail after `deadline` seconds without an answer."""
        with super().connection(timeout) as conn:
            try:
                with self.watchdog.guard(conn, deadline):
                    yield conn
            finally:
                self._last_used[id(conn)] = time.monotonic()

    # Not named _check: ConnectionPool keeps its check callback in an attribute of that name.
    def _check_idle(self, conn: psycopg.Connection[DictRow]) -> None:
        if time.monotonic() - self._last_used.get(id(conn), 0.0) < CHECK_IDLE_AFTER:
            return
        with self.watchdog.guard(conn, CONNECT_TIMEOUT):
            ConnectionPool.check_connection(conn)


def open_pool(database_url: str, max_size: int = 10, name: str = "deskmail", timeout: float = 10.0) -> GuardedPool:
    """A pool of dict-row autocommit connections that fail fast; opened now, connecting in the background."""
    return GuardedPool(
        database_url, min_size=1, max_size=max(2, max_size), name=name, open=True, timeout=timeout,
        kwargs={"row_factory": dict_row, "autocommit": True, **CONNECTION_OPTIONS},
        reconnect_timeout=RECONNECT_WINDOW,
    )
