"""What one worker process holds: configuration, pool, store, settings and transports, built lazily."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from typing import Callable

from deskmail.workers.config import Config
from deskmail.workers.leases import LeaseKeeper
from deskmail.workers.secrets import SecretBox
from deskmail.workers.settings import SettingsService
from deskmail.workers.store import Store, open_pool
from deskmail.workers.transports.base import Transport

log = logging.getLogger(__name__)


class Runtime:
    """Process-wide services; the pool opens on first use, never at import."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The store, opening the pool on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = Store(open_pool(self.config.database_url, self.config.db_pool_max))
        return self._store

    @functools.cached_property
    def leases(self) -> LeaseKeeper:
        """The renewer of this process's delivery leases."""
        return LeaseKeeper(self.store, self.config.lease_seconds, self.config.renew_every)

    @property
    def worker(self) -> str:
        """This process as attempts and leases name it: host:pid."""
        return f"{socket.gethostname()}:{os.getpid()}"

    @functools.cached_property
    def box(self) -> SecretBox:
        """The secret box over DESKMAIL_SECRET_KEYS."""
        return SecretBox(self.config.secret_keys)

    @functools.cached_property
    def settings(self) -> SettingsService:
        """Project settings, cached by version."""
        return SettingsService(self.store, lambda: self.box)

    @functools.cached_property
    def transports(self) -> dict[str, Transport]:
        """One transport object per mail service."""
        from deskmail.workers.transports import registry
        return registry.build(self.config)

    def close_thread(self) -> None:
        """Close the connections the calling thread's transports keep open (when a worker thread stops)."""
        self._close_transports(lambda transport: transport.close())

    def close(self) -> None:
        """Close everything this process holds (once its worker threads have stopped): the transports'
        connections, the lease renewer, the pool."""
        self._close_transports(lambda transport: transport.close())
        self._close_transports(lambda transport: transport.close_shared())
        if "leases" in self.__dict__:
            self.leases.stop()
        if self._store is not None:
            self._store.pool.close()

    def _close_transports(self, close: Callable[[Transport], None]) -> None:
        """Close each transport built so far; one that fails to say goodbye does not stop the others."""
        for transport in self.__dict__.get("transports", {}).values():
            try:
                close(transport)
            except Exception:  # noqa: BLE001 - a shutdown goes on whatever one session does
                log.warning("closing the %s transport's connections failed", transport.service, exc_info=True)
