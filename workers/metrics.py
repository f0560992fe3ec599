"""deskmail's Prometheus metrics: counters the workers increment, gauges read from the ledger on a scrape.

prometheus-client picks its value store when a metric is created: under `dramatiq -p N` every process
writes to files in PROMETHEUS_MULTIPROC_DIR (set by `use_multiprocess_dir` before the first metric)
and the group's one endpoint adds them up. Elsewhere (the scheduler, tests) metrics live in memory.
The recording functions are cheap and never raise into the caller's work.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

log = logging.getLogger(__name__)
PREFIX = "deskmail_"
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def use_multiprocess_dir(directory: str) -> None:
    """Make this process write its metrics to files in directory (before any metric is created)."""
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import prometheus_client.values as values
    # The value class is chosen when prometheus_client is first imported; choose again now.
    values.ValueClass = values.get_value_class()


def multiprocess_dir() -> str | None:
    """The folder metrics are written to, when this process is part of a multi-process group."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(frozen=True)
class Instruments:
    """The metric objects; created once per process, on first use."""

    outcomes: Any
    admissions: Any
    send_seconds: Any
    token_failures: Any
    scheduler_mails: Any
    data_groups: Any


@functools.cache
def instruments() -> Instruments:
    """The process's metric objects (created lazily so the multiprocess folder is set first)."""
    import prometheus_client as prom
    return Instruments(
        outcomes=prom.Counter(f"{PREFIX}mail_outcomes", "Outcomes recorded by the transport workers.",
                              ["project", "service", "outcome"]),
        admissions=prom.Counter(f"{PREFIX}admissions", "Events admitted, by the state admission gave them.",
                                ["project", "state", "reason"]),
        send_seconds=prom.Histogram(f"{PREFIX}send_duration_seconds",
                                    "Time of one send over a transport, by service and outcome.",
                                    ["service", "outcome"], buckets=SEND_BUCKETS),
        token_failures=prom.Counter(f"{PREFIX}token_refresh_failures", "OAuth2 token requests that failed.",
                                    ["service"]),
        scheduler_mails=prom.Counter(f"{PREFIX}scheduler_mails", "Mails a scheduler step handed on or recovered.",
                                     ["step"]),
        data_groups=prom.Histogram(f"{PREFIX}data_phase_group_size",
                                   "Sending threads' DATA phases written in one transaction (group commit).",
                                   buckets=GROUP_BUCKETS),
    )


def _safely(func):  # noqa: ANN001, ANN202 - a decorator
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a metric must never fail a send
            log.debug("metric %s not recorded", func.__name__, exc_info=True)
    return wrapper


@_safely
def mail_outcome(project: str | None, service: str | None, outcome: str) -> None:
    """Count an outcome a worker recorded: sent, partial, retry, quota, configuration, failed, ambiguous, lease_lost."""
    instruments().outcomes.labels(project or "", service or "", outcome).inc()


@_safely
def send_finished(service: str, outcome: str, seconds: float) -> None:
    """Observe how long one send over a transport took."""
    instruments().send_seconds.labels(service, outcome).observe(seconds)


@_safely
def data_group_written(size: int) -> None:
    """Observe how many sending threads' DATA phases one transaction carried."""
    instruments().data_groups.observe(size)


@_safely
def admitted(project: str | None, state: str, reason: str | None) -> None:
    """Count an admission decision."""
    instruments().admissions.labels(project or "", state, reason or "").inc()


@_safely
def token_refresh_failed(service: str) -> None:
    """Count a failed OAuth2 token request of a mail service."""
    instruments().token_failures.labels(service).inc()


@_safely
def scheduler_pass(done: dict[str, int]) -> None:
    """Count what one scheduler pass touched, per step."""
    for step, n in done.items():
        if n:
            instruments().scheduler_mails.labels(step).inc(n)


class LedgerCollector:
    """Gauges read from PostgreSQL on each scrape: backlog, quota, pauses, oldest waiting mail, heartbeat."""

    def __init__(self, store, heartbeat_max_age: float = 60.0) -> None:  # noqa: ANN001 - workers.store.Store
        self.store, self.heartbeat_max_age = store, heartbeat_max_age

    def collect(self) -> Iterator[Any]:
        """Yield the gauge families; `deskmail_ledger_up` is 0 when the database could not be read."""
        from prometheus_client.core import GaugeMetricFamily
        families: dict[str, GaugeMetricFamily] = {}
        up = GaugeMetricFamily(f"{PREFIX}ledger_up", "1 when this endpoint could read the ledger.")
        try:
            gauges = self.store.gauges()
            beat = self.store.last_heartbeat(self.heartbeat_max_age)
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: cannot read the ledger: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for g in gauges:
            family = families.get(g.name)
            if family is None:
                family = families[g.name] = GaugeMetricFamily(PREFIX + g.name, HELP.get(g.name, g.name),
                                                              labels=[k for k, _ in g.labels])
            family.add_metric([v for _, v in g.labels], g.value)
        yield from families.values()
        age = GaugeMetricFamily(f"{PREFIX}scheduler_heartbeat_age_seconds",
                                "Seconds since the newest scheduler heartbeat (absent: none ever).")
        if beat.age is not None:
            age.add_metric([], beat.age)
        yield age
        fresh = GaugeMetricFamily(f"{PREFIX}schedulers_alive",
                                  "Schedulers whose heartbeat is younger than DESKMAIL_HEARTBEAT_MAX_AGE.")
        fresh.add_metric([], beat.fresh)
        yield fresh


HELP = {
    "mails": "Mails in the ledger by project and state (sent and rejected are counted by deskmail_mail_outcomes).",
    "backlog_mails": "Mails in the backlog by project and reason.",
    "suspended_mails": "Suspended mails by project.",
    "quota_used": "Quota units taken today, per project (its own day) and global.",
    "quota_limit": "Daily limit per project and global (0: no limit).",
    "project_paused_seconds": "Seconds a paused project has been paused, by reason.",
    "project_config_error_seconds": "Seconds since a project's configuration error was recorded.",
    "oldest_waiting_seconds": "Age of the oldest queued mail that is due and not yet taken, per project.",
}
