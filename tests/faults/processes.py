"""deskmail's own processes started for real (Dramatiq workers, the scheduler), under a small supervisor.

A fault test kills them with real signals. The supervisor plays systemd's `Restart=always`: a
process that exits is started again after a short pause, so recovery needs no manual step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """The direct children of a process (Dramatiq's worker processes under its main process)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class Supervised:
    """A command kept running: restarted whenever it exits, until stop()."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path,
                 restart_delay: float = 0.5) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.restart_delay = restart_delay
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> "Supervised":
        """Start the process and its supervisor."""
        self._spawn()
        self._thread.start()
        return self

    @property
    def pid(self) -> int:
        """The pid of the current main process."""
        assert self._proc is not None
        return self._proc.pid

    def worker_pids(self) -> list[int]:
        """Dramatiq's worker processes (children of the main process)."""
        return children(self.pid)

    def kill_workers(self) -> list[int]:
        """SIGKILL every Dramatiq worker process (the ones holding connections and messages)."""
        pids = self.worker_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids

    def kill(self) -> None:
        """SIGKILL the main process and its children."""
        for pid in [*self.worker_pids(), self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful), SIGKILL after timeout; no restart."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*children(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)
        self._thread.join(timeout=5)

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _spawn(self) -> None:
        with self._lock:
            out = open(self.log_path, "ab")
            self._proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            out.close()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                # Dramatiq's main process exits when one of its workers dies: orphans go too.
                for pid in children(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(self.restart_delay)
                if not self._stopping.is_set():
                    self.restarts += 1
                    self._spawn()
            time.sleep(0.1)


def worker(env: dict[str, str], log_dir: Path, name: str = "worker", threads: int = 4) -> Supervised:
    """`python -m dramatiq workers.app:setup -p 1 -t N`, supervised."""
    argv = [sys.executable, "-m", "dramatiq", "deskmail.workers.app:setup", "-p", "1", "-t", str(threads),
            "--worker-shutdown-timeout", "5000"]
    return Supervised(name, argv, env, log_dir).start()


def scheduler(env: dict[str, str], log_dir: Path, name: str = "scheduler") -> Supervised:
    """`deskmail scheduler`, supervised."""
    argv = [sys.executable, "-m", "deskmail.producers.cli", "scheduler"]
    return Supervised(name, argv, env, log_dir).start()
