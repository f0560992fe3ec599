"""A private RabbitMQ node and a private PostgreSQL cluster that the fault tests may break at will.

Both live in a temporary directory of their own, on ports of their own, and never touch the
machine's shared services: the fault tests restart, crash and stall them.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg

from tests.peers.net import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the real scripts: /usr/sbin's wrapper switches to the rabbitmq user


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class RabbitNode:
    """One RabbitMQ node with its own name, ports, Mnesia and log directories, cookie and no plugins."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"deskmail-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.home = base / "home"
        self.pid_file = base / "node.pid"
        for sub in ("home", "mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's, which names the shared node
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                                            "loopback_users = none\n")
        self._server: subprocess.Popen | None = None
        self.up_at = 0.0  # time.monotonic() when the node last accepted connections again

    @property
    def env(self) -> dict[str, str]:
        """The environment every RabbitMQ script needs to address this node (and only it)."""
        return {**os.environ, "HOME": str(self.home), "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"), "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def url(self, vhost: str = "/") -> str:
        """The AMQP URL of a vhost on this node."""
        from urllib.parse import quote
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run rabbitmqctl against this node."""
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def start(self, timeout: float = 90) -> None:
        """Start the node and wait until it accepts AMQP connections.

        Right after a kill -9 a start can fail at once (a port or the node name not yet released):
        it is tried again, with a fresh distribution port, until `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._spawn(deadline):
                break
            if time.monotonic() > deadline:
                tail = (self.base / "server.out").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"RabbitMQ node {self.name} did not start: {tail}")
            self.dist_port = free_port()
            time.sleep(1)
        self.up_at = time.monotonic()
        self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)

    def _spawn(self, deadline: float) -> bool:
        """One start attempt: True once the node wrote its pid file, False if the server exited first."""
        self.pid_file.unlink(missing_ok=True)
        log = open(self.base / "server.out", "ab")
        self._server = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        while not (self.pid_file.exists() and _port_open(self.port)):  # listeners open last in the boot
            if self._server.poll() is not None:
                self._server = None
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.name} did not start; see {self.base / 'server.out'}")
            time.sleep(0.1)
        return True

    @property
    def pid(self) -> int:
        """The pid of this node's beam process, from its own pid file."""
        return int(self.pid_file.read_text().strip())

    def stop(self) -> None:
        """Stop the node gracefully (or kill it if it does not answer)."""
        try:
            self.cont()
            self.ctl("stop", timeout=60)
        except (subprocess.SubprocessError, OSError, ValueError):
            self.kill()
        self._reap()

    def restart(self) -> None:
        """A graceful stop, then a start on the same data."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """kill -9 of this node's beam process only."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError, ValueError):
            pass
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets open and answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after pause()."""
        try:
            os.kill(self.pid, signal.SIGCONT)
        except (ProcessLookupError, FileNotFoundError, ValueError):
            pass

    def _reap(self) -> None:
        if self._server is not None:
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(timeout=10)
            self._server = None

    def add_vhost(self, vhost: str) -> str:
        """Create a vhost for guest; returns its URL."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.url(vhost)

    def delete_vhost(self, vhost: str) -> None:
        """Delete a vhost, quietly."""
        self.ctl("delete_vhost", vhost, check=False)


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program (the newest installed major version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(f"no /usr/lib/postgresql/*/bin/{name}: PostgreSQL server is not installed")
    return found[-1]


class PgCluster:
    """One PostgreSQL cluster in a directory owned by the `postgres` user, on its own port, trust auth."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        os.chown(base, _uid("postgres"), -1)

    def _as_postgres(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root.
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              check=True, timeout=timeout, cwd=self.base)

    def init(self) -> None:
        """initdb with trust authentication, loopback only, fsync off (a crash here is a process crash)."""
        self._as_postgres(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.base}'\n"
                       "fsync = off\nmax_connections = 200\nshared_buffers = 64MB\n")

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this cluster."""
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
                          "-t", "60", *args)

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`fast`, or `immediate`: a crash without checkpoint)."""
        self.pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again."""
        self.pg_ctl("restart", "-m", mode)

    def url(self, dbname: str = "postgres") -> str:
        """A connection URL for a database of this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement as the superuser in the `postgres` database."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def terminate_backends(self, dbname: str) -> int:
        """pg_terminate_backend of every connection to dbname; returns how many were ended."""
        rows = self.admin("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        return int(rows[0][0])


def _uid(user: str) -> int:
    import pwd
    return pwd.getpwnam(user).pw_uid
