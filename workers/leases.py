"""The worker side of the delivery lease: claims held by this process are renewed in the background.

One thread per process renews every held lease in one statement, every quarter of the lease, so a
slow server (slow RCPTs, a final reply after minutes) never makes a live worker's mail look
abandoned. A renewal that fails (database unreachable) is simply tried again next time; the
scheduler's takeover grace covers two missed renewals.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from typing import Iterator, Protocol

from deskmail.workers.errors import StoreError
from deskmail.workers.records import Claim

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    """What renewing leases needs of the store."""

    def renew_leases(self, held: list[tuple[uuid.UUID, uuid.UUID]], lease: float) -> set[uuid.UUID]: ...


class LeaseKeeper:
    """Renews the leases of the mails this process is sending."""

    def __init__(self, store: LeaseStore, lease: float, every: float) -> None:
        self.store, self.lease, self.every = store, lease, every
        self._held: dict[uuid.UUID, uuid.UUID] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, claims: list[Claim]) -> Iterator[None]:
        """Keep the claims' leases alive while the block runs."""
        self._start()
        with self._lock:
            self._held.update((c.event_id, c.lease_token) for c in claims)
        try:
            yield
        finally:
            self.release(claims)

    def release(self, claims: list[Claim]) -> None:
        """Stop renewing these claims (their outcomes are written)."""
        with self._lock:
            for claim in claims:
                self._held.pop(claim.event_id, None)

    def renew(self) -> set[uuid.UUID]:
        """Renew every held lease now; returns the ids renewed (a lease taken over is not, nor a row another
        statement holds at that moment: renewed next time; the worker learns of a takeover at its next write)."""
        with self._lock:
            held = list(self._held.items())
        if not held:
            return set()
        return self.store.renew_leases(held, self.lease)

    def stop(self) -> None:
        """Stop the renewer (when the worker's threads have finished: no lease is held any more)."""
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every + 1)

    def _start(self) -> None:
        if self._wake.is_set():
            return  # stopped: a late claim keeps its lease only until the scheduler's takeover
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="deskmail-leases", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._wake.wait(self.every):
            try:
                self.renew()
            except StoreError:
                pass  # the store logs the outage once; the next round tries again
            except Exception:  # noqa: BLE001 - the renewer must outlive any surprise
                log.exception("lease renewal failed")
