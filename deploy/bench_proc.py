"""What the bench reads from /proc: CPU seconds per process group, a process's RSS, who listens on a port.

The bench attributes CPU to the processes that do the work (its own threads, the workers, the
broker, PostgreSQL, the sink) by reading utime+stime at its phase boundaries; a process that
exited in between is still counted through its parent's cutime+cstime, so a group's total is
the sum of (own + reaped children's) time over the group's live processes.
"""

from __future__ import annotations

import os
from typing import Iterator
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    """One /proc/<pid>/stat line, as far as the bench needs it."""

    pid: int
    ppid: int
    comm: str
    own: float        # utime + stime, seconds
    children: float   # cutime + cstime: children that exited and were reaped


def read_proc(pid: int) -> Proc | None:
    """The stat of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is stat field 3 (state)
    ticks = [int(v) for v in fields[11:15]]      # utime, stime, cutime, cstime (fields 14-17)
    return Proc(pid, int(fields[1]), comm, (ticks[0] + ticks[1]) / CLOCK_TICKS, (ticks[2] + ticks[3]) / CLOCK_TICKS)


def process_table() -> dict[int, Proc]:
    """Every process on the machine, by pid."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))):
            table[proc.pid] = proc
    return table


def tree(table: dict[int, Proc], root: int | None) -> list[Proc]:
    """The root and all its descendants that are alive in table."""
    if root is None or root not in table:
        return []
    kids: dict[int, list[int]] = {}
    for proc in table.values():
        kids.setdefault(proc.ppid, []).append(proc.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(table[pid])
        todo.extend(kids.get(pid, ()))
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def cmdline(pid: int) -> str:
    """A process's command line with spaces between the arguments ('' when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def rss_mib(pid: int) -> float | None:
    """A process's resident set size (VmRSS) in MiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _tcp_rows() -> Iterator[list[str]]:
    """The fields of each row of this machine's TCP socket tables (IPv4 and IPv6)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        yield from (row.split() for row in rows)


def listener(port: int) -> int | None:
    """The pid of the process listening on a TCP port of this machine, or None."""
    inodes = {f"socket:[{parts[9]}]" for parts in _tcp_rows()
              if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port}  # 0A: LISTEN
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) in inodes:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


@dataclass
class CpuProfile:
    """CPU seconds per process group at the bench's phase boundaries, reported in CPU-ms per mail.

    Groups: publisher (the bench process's own threads), subprocesses (commands the bench ran
    and waited for: deskmail CLI calls, the django-post_office run), workers and scheduler
    (their process trees), rabbitmq (the broker listening on the AMQP port, with its children),
    postgres (the server listening on the database port: every backend, and through the
    postmaster those that exited), smtp-sink, and machine_other: whatever else kept the
    machine's cores busy (other users of this shared machine; noise, not deskmail).
    postgres_bench_db is the part of postgres spent in live backends of the bench's own
    databases (a lower bound: backends that exited are only in the postgres total).
    """

    enabled: bool
    rabbit_port: int = 5672
    pg_port: int = 5432
    db_marker: str = "deskmail_bench"
    roots: dict[str, int] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.enabled:
            self.rabbit = listener(self.rabbit_port)
            self.postmaster = listener(self.pg_port)

    def watch(self, group: str, pid: int) -> None:
        """Count a process tree (workers, scheduler, sink) as a group from now on."""
        self.roots[group] = pid

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far per group (empty when profiling is off)."""
        if not self.enabled:
            return {}
        table = process_table()
        me = table[os.getpid()]
        out = {"publisher": me.own, "subprocesses": me.children}
        for group, root in self.roots.items():
            out[group] = sum(p.own + p.children for p in tree(table, root))
        out["rabbitmq"] = sum(p.own + p.children for p in tree(table, self.rabbit))
        pg = tree(table, self.postmaster)
        out["postgres"] = sum(p.own + p.children for p in pg)
        out["postgres_bench_db"] = sum(p.own for p in pg if self.db_marker in cmdline(p.pid))
        out["machine_busy"] = machine_busy()
        return out

    def record(self, phase: str, before: dict[str, float], mails: int) -> None:
        """Store CPU-ms per mail per group for a phase that began at `before` and ends now."""
        if not self.enabled or mails <= 0:
            return
        after = self.snapshot()
        delta = {g: after.get(g, 0.0) - before.get(g, 0.0) for g in after}
        attributed = sum(v for g, v in delta.items() if g not in ("machine_busy", "postgres_bench_db"))
        delta["machine_other"] = max(0.0, delta.pop("machine_busy") - attributed)
        self.phases[phase] = {g: round(v * 1000 / mails, 3) for g, v in delta.items()}

    def table(self) -> str:
        """The recorded phases as a text table of CPU-ms per mail."""
        groups = ["publisher", "subprocesses", *self.roots, "rabbitmq", "postgres", "postgres_bench_db",
                  "machine_other"]
        widths = [max(len(g) + 2, 9) for g in groups]
        lines = [f"{'CPU-ms per mail':<16}" + "".join(f"{g:>{w}}" for g, w in zip(groups, widths)) + f"{'total':>9}"]
        for phase, row in self.phases.items():
            total = sum(v for g, v in row.items() if g not in ("postgres_bench_db", "machine_other"))
            lines.append(f"{phase:<16}" + "".join(f"{row.get(g, 0.0):>{w}.3f}" for g, w in zip(groups, widths))
                         + f"{total:>9.3f}")
        lines.append("(total: the bench's own processes, workers, broker, PostgreSQL and sink; postgres_bench_db is "
                     "part of postgres; machine_other is other load on this shared machine)")
        return "\n".join(lines)


def tcp_ports(pids: list[int]) -> set[int]:
    """The local ports of the TCP sockets these processes hold (to tell whose PostgreSQL backend is whose)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return {int(parts[1].rsplit(":", 1)[1], 16) for parts in _tcp_rows() if parts[9] in inodes}


def backend_client_port(pid: int) -> int | None:
    """The client port a PostgreSQL backend serves, from its title (`postgres: ... 127.0.0.1(PORT) ...`)."""
    title = cmdline(pid)
    start = title.find("(")
    end = title.find(")", start)
    return int(title[start + 1:end]) if 0 <= start < end and title[start + 1:end].isdigit() else None
