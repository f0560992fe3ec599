"""Fixtures of the fault suite: a private RabbitMQ node, a private PostgreSQL cluster, real worker
and scheduler processes, and the report every test adds its row to.

Nothing here touches the machine's shared RabbitMQ or PostgreSQL: the tests break these.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import TEST_KEY
from tests.faults import processes
from tests.faults.ledger import Verdict
from tests.faults.report import Report
from tests.faults.services import PgCluster, RabbitNode
from tests.integration.helpers import smtp_settings

REPO = Path(__file__).resolve().parents[2]
REPORT = Report()
TEMPLATE_DB = "deskmail_template"

# Short timers so that a fault and its recovery fit in seconds. The lease settings are read by the
# delivery leases once they exist; STALE_AFTER governs recovery until then.
WORKER_ENV = {
    "DESKMAIL_SECRET_KEYS": TEST_KEY,
    "DESKMAIL_CONTROL_KEY": "faults-control-key",  # the control actor refuses to start without one
    "DESKMAIL_OUTBOUND_ALLOW": "127.0.0.0/8",
    "DESKMAIL_RETRY_BASE": "0.5",
    "DESKMAIL_RETRY_CAP": "2",
    "DESKMAIL_STALE_AFTER": "4",
    "DESKMAIL_LEASE_SECONDS": "4",
    "DESKMAIL_TAKEOVER_GRACE": "2",
    "DESKMAIL_SCHEDULER_INTERVAL": "0.5",
    "DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT": "20",
    "DESKMAIL_PUBLISH_TIMEOUT": "5",
    "DESKMAIL_DB_POOL_MAX": "8",
    "DESKMAIL_LOG_LEVEL": "INFO",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A fault and its recovery take longer than the suite-wide 120 s limit allows for a stuck test."""
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(300))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Put each test's outcome into its report row."""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        REPORT.result(report.nodeid, report.outcome if report.when == "call" else f"error ({report.outcome})")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write var/faults-report.md and .json."""
    REPORT.write(Path(session.config.rootpath) / "var", "make faults")


@pytest.fixture(scope="session")
def fault_report() -> Report:
    """The session's report collector."""
    return REPORT


class Recorder:
    """The report row of one test: opened before the fault, filled from the measured verdict."""

    def __init__(self, report: Report, test: str) -> None:
        self.report, self.test = report, test

    def __call__(self, fault: str, expected: str) -> "Recorder":
        """Name the fault and what must hold after it."""
        self.report.row(self.test, fault, expected)
        return self

    def verdict(self, verdict: Verdict, **figures: object) -> Verdict:
        """Record the verdict, then fail the test on any broken invariant."""
        self.report.measured(self.test, verdict, **figures)
        assert not verdict.problems, "; ".join(verdict.problems)
        return verdict

    def note(self, observed: str, **figures: object) -> None:
        """Record a measurement that is not a ledger verdict (e.g. how long a publish blocked)."""
        row = self.report.rows[self.test]
        row.observed = observed
        row.figures.update(figures)


@pytest.fixture
def record(fault_report: Report, request: pytest.FixtureRequest) -> Recorder:
    """`record(fault, expected)` opens this test's row; `.verdict(v)` fills it and asserts."""
    return Recorder(fault_report, request.node.nodeid)


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitNode]:
    """A private RabbitMQ node for the session (tests restart, kill and stall it)."""
    node = RabbitNode(Path(tempfile.mkdtemp(prefix="deskmail-faults-rabbit-")))
    try:
        node.start()
    except Exception as exc:  # noqa: BLE001 - a suite that cannot start its broker must fail loudly
        node.kill()
        pytest.fail(f"cannot start a private RabbitMQ node: {exc}")
    yield node
    node.stop()
    shutil.rmtree(node.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for the session, with a migrated template database."""
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="deskmail-faults-pg-")))
    try:
        cluster.init()
        cluster.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"cannot start a private PostgreSQL cluster: {exc}")
    from deskmail.workers.store import Store, open_pool
    cluster.admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
    pool = open_pool(cluster.url(TEMPLATE_DB), 2)
    Store(pool).migrate()
    pool.close()
    yield cluster
    cluster.stop("immediate")
    shutil.rmtree(cluster.base, ignore_errors=True)


class Site:
    """One deskmail installation on the private services: its own database and vhost, its processes."""

    def __init__(self, rabbit: RabbitNode, pg: PgCluster, log_dir: Path) -> None:
        self.rabbit, self.pg, self.log_dir = rabbit, pg, log_dir
        suffix = uuid.uuid4().hex[:8]
        self.db_name, self.vhost = f"deskmail_faults_{suffix}", f"faults-{suffix}"
        pg.admin(f'CREATE DATABASE "{self.db_name}" TEMPLATE "{TEMPLATE_DB}"')
        self.db_url = pg.url(self.db_name)
        self.amqp_url = rabbit.add_vhost(self.vhost)
        self.processes: list[processes.Supervised] = []
        self._runtime = None
        self._publisher = None
        self.declare()

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of this site's processes."""
        return {**os.environ, **WORKER_ENV, "PYTHONPATH": str(REPO), "DESKMAIL_DATABASE_URL": self.db_url,
                "DESKMAIL_AMQP_URL": self.amqp_url, **overrides}

    @property
    def config(self):  # noqa: ANN201 - workers.config.Config
        """The site's configuration, for in-process helpers."""
        from deskmail.workers.config import Config
        return dataclasses.replace(Config.from_env(self.env()), outbound_allow=(ipaddress.ip_network("127.0.0.0/8"),))

    @property
    def runtime(self):  # noqa: ANN201 - workers.runtime.Runtime
        """A Runtime in the test process (project settings, limits)."""
        if self._runtime is None:
            from deskmail.workers.runtime import Runtime
            self._runtime = Runtime(self.config)
        return self._runtime

    @property
    def publisher(self):  # noqa: ANN201 - producers.publisher.Publisher
        """A Publisher on the site's vhost."""
        if self._publisher is None:
            from deskmail.producers.publisher import Publisher
            self._publisher = Publisher(self.amqp_url, timeout=float(WORKER_ENV["DESKMAIL_PUBLISH_TIMEOUT"]))
        return self._publisher

    def declare(self) -> None:
        """Declare deskmail's queues, as `deskmail broker declare` does."""
        from deskmail.workers.app import build_broker
        from deskmail.workers.constants import Queue
        broker = build_broker(self.config)
        try:
            for queue in Queue:
                broker.declare_queue(queue, ensure=True)
        finally:
            broker.close()

    def project(self, peer, name: str = "alpha", *, per_day: int | None = None, **smtp: object) -> str:  # noqa: ANN001
        """Give a project plain SMTP settings pointing at peer (no TLS, no AUTH unless asked)."""
        smtp.setdefault("security", "none")
        smtp.setdefault("auth", "none")
        self.runtime.settings.save(name, smtp_settings(peer, per_day=per_day, **smtp))
        return name

    def worker(self, name: str = "worker", threads: int = 4, **env: str) -> processes.Supervised:
        """Start a supervised `dramatiq workers.app:setup -p 1 -t threads`."""
        proc = processes.worker(self.env(**env), self.log_dir, f"{name}-{len(self.processes)}", threads)
        self.processes.append(proc)
        return proc

    def scheduler(self, **env: str) -> processes.Supervised:
        """Start a supervised `deskmail scheduler`."""
        proc = processes.scheduler(self.env(**env), self.log_dir, f"scheduler-{len(self.processes)}")
        self.processes.append(proc)
        return proc

    def logs(self) -> str:
        """The tail of every process log, for a failing test's output."""
        return "\n".join(f"--- {p.name} (restarts: {p.restarts})\n{p.log()[-3000:]}" for p in self.processes)

    def close(self) -> None:
        """Stop the processes, drop the database and the vhost."""
        for proc in self.processes:
            proc.stop()
        if self._publisher is not None:
            self._publisher.close()
        if self._runtime is not None:
            self._runtime.close()
        try:
            self.pg.admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except Exception:  # noqa: BLE001 - the cluster may be down after a failed test; it is temporary
            pass
        self.rabbit.delete_vhost(self.vhost)


@pytest.fixture
def site(rabbit: RabbitNode, pg: PgCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    """A fresh deskmail site for one test; process logs are printed when the test fails."""
    ensure_up(rabbit, pg)
    s = Site(rabbit, pg, tmp_path)
    yield s
    s.close()
    print(s.logs(), file=sys.stderr)


@pytest.fixture(scope="module")
def shared_site(rabbit: RabbitNode, pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One site for a whole module of tests that break only the SMTP peer (one project per test)."""
    ensure_up(rabbit, pg)
    s = Site(rabbit, pg, tmp_path_factory.mktemp("site"))
    s.worker(threads=8)
    s.scheduler()
    yield s
    s.close()


def ensure_up(rabbit: RabbitNode, pg: PgCluster) -> None:
    """A test that failed mid-fault may leave a service down or stopped: bring it back."""
    rabbit.cont()
    try:
        rabbit.ctl("status", timeout=30)
    except Exception:  # noqa: BLE001
        rabbit.kill()
        rabbit.start()
    try:
        pg.admin("SELECT 1")
    except Exception:  # noqa: BLE001
        pg.start()
