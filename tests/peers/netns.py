"""Several hosts on one machine: network namespaces on a private bridge, and a TCP forwarder to the services.

Each host is a network namespace with one veth link into a bridge that only exists on this machine
(10.213.N.0/24, N random per run so parallel runs do not meet). The shared PostgreSQL, RabbitMQ and
the tests' SMTP peer listen on 127.0.0.1 only, so a forwarder on the bridge address (10.213.N.1)
carries each connection to them and remembers which host opened it. `cut(host)` takes the host's
link down: its connections go silent, as when a machine drops off the network.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def why_not_available() -> str | None:
    """None when namespaces can be made here, else the reason (to skip with)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"dmprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.decode(errors='replace').strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """One namespace: its name, address and the host-side end of its link."""

    name: str
    address: str
    link: str
    processes: list[subprocess.Popen] = field(default_factory=list)


class Forwarder:
    """Listens on the bridge address, one port per service, and pipes each connection to 127.0.0.1."""

    def __init__(self, listen: str, targets: Mapping[str, tuple[str, int]]) -> None:
        self.listen, self.targets = listen, dict(targets)
        self.ports: dict[str, int] = {}
        self.connections: dict[str, collections.Counter] = {name: collections.Counter() for name in targets}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netns-forwarder", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> "Forwarder":
        """Open the listening ports."""
        self._thread.start()
        for name, target in self.targets.items():
            server = asyncio.run_coroutine_threadsafe(self._serve(name, target), self._loop).result(10)
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, name: str, target: tuple[str, int]) -> asyncio.base_events.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections[name][writer.get_extra_info("peername")[0]] += 1
            self._writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        return await asyncio.start_server(handle, self.listen, 0)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):  # a side closed, or the forwarder stops
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        """Close the listening ports and every open pipe, then the loop."""
        async def close() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):  # each pipe then reads its end and finishes
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait(tasks, timeout=5) if tasks else None
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Hosts:
    """`with Hosts(2) as hosts:` two namespaces on a private bridge; all removed on exit."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.net = f"10.213.{random.randint(1, 254)}"
        self.gateway = f"{self.net}.1"
        self.bridge = f"dmbr{tag}"
        self.hosts = [Host(f"dmhost{tag}{i}", f"{self.net}.{i + 2}", f"dmv{tag}{i}") for i in range(count)]

    def __enter__(self) -> "Hosts":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                inner = f"{host.link}p"
                _ip("netns", "add", host.name)
                _ip("link", "add", host.link, "type", "veth", "peer", "name", inner)
                _ip("link", "set", inner, "netns", host.name)
                _ip("link", "set", host.link, "master", self.bridge, "up")
                _ip("addr", "add", f"{host.address}/24", "dev", inner, netns=host.name)
                _ip("link", "set", inner, "up", netns=host.name)
                _ip("link", "set", "lo", "up", netns=host.name)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, host: Host, argv: Sequence[str], env: Mapping[str, str], log) -> subprocess.Popen:  # noqa: ANN001
        """Start a process inside the host's namespace (its own process group)."""
        proc = subprocess.Popen(["ip", "netns", "exec", host.name, *argv], env=dict(env), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        host.processes.append(proc)
        return proc

    def cut(self, host: Host) -> None:
        """Take the host's link down: nothing it sends arrives, nothing reaches it."""
        _ip("link", "set", host.link, "down")

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            for proc in host.processes:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait(10)
            # the link first: a namespace whose sockets still wait on a dead link lingers after `del`
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
