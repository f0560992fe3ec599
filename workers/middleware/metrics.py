"""The metrics endpoint of a `dramatiq -p N` process group: one HTTP server for all its worker processes.

Each worker process writes its metrics to files in the group's folder; Dramatiq's CLI runs the
`forks` of a middleware as extra processes of the group (as Dramatiq's own Prometheus middleware
does), and that process serves /metrics from the files of all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dramatiq

from deskmail.workers import metrics
from deskmail.workers.config import Config

GROUP_PREFIX = "deskmail-metrics-"


def group_dir(config: Config) -> str:
    """The group's metric folder: DESKMAIL_METRICS_DIR, or one per dramatiq main process (our parent)."""
    return config.metrics_dir or os.path.join(tempfile.gettempdir(), f"{GROUP_PREFIX}{os.getppid()}")


class MetricsEndpoint(dramatiq.Middleware):
    """Puts this worker process's metrics in the group's folder and asks for the endpoint process."""

    def __init__(self, config: Config) -> None:
        metrics.use_multiprocess_dir(group_dir(config))

    @property
    def forks(self) -> list:
        """The endpoint process, started once per group by Dramatiq's CLI."""
        return [serve_group]


def _remove_dead_groups() -> None:
    """Folders of groups whose main process is gone (a temporary folder is not cleaned otherwise)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{GROUP_PREFIX}*"):
        pid = folder.name.removeprefix(GROUP_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def serve_group() -> int:
    """Serve the group's endpoint until the group stops (runs in a process of its own)."""
    from deskmail.workers.endpoint import ledger_store, server
    config = Config.from_env()
    if not config.metrics_dir:
        _remove_dead_groups()
    metrics.use_multiprocess_dir(group_dir(config))
    store = ledger_store(config)
    httpd = server(config, store)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        store.pool.close()
    return 0
