"""Closes what a worker process holds when Dramatiq stops it."""

from __future__ import annotations

import dramatiq

from deskmail.workers.runtime import Runtime


class Lifecycle(dramatiq.Middleware):
    """Each worker thread closes its own transport sessions (SMTP QUIT, HTTP connections) as it stops;
    once every thread has stopped, the process closes the shared ones, the lease renewer and the pool."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: object) -> None:
        self.runtime.close_thread()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.close()
