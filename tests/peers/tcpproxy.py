"""A small asyncio TCP proxy for fault tests: pass bytes through, freeze (a silent route), or cut.

`freeze()` is a route that went silent: connections stay open, nothing reaches either side and
new connections are accepted but never answered; `thaw()` lets everything flow again, as TCP
does once a route comes back. `cut()` closes every connection at once. `delay` holds each chunk
sent by the upstream server that long (slow replies).
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from tests.peers.net import bound_socket


class TcpProxy:
    """Listens on 127.0.0.1 at a free port and forwards to (host, port), in a thread of its own."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcpproxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.port = 0

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return "127.0.0.1"

    def start(self) -> "TcpProxy":
        """Start listening."""
        self._thread.start()
        sock = bound_socket(self.host)
        self.port = sock.getsockname()[1]
        self._call(self._listen(sock))
        return self

    def stop(self) -> None:
        """Close every connection and stop listening."""
        self._call(self._close(stop_listening=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def freeze(self) -> None:
        """Go silent: keep every connection open, forward nothing, answer no new connection."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        """Let bytes flow again, held ones first."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def cut(self) -> None:
        """Close every open connection (the proxy keeps accepting new ones)."""
        self._call(self._close(stop_listening=False))

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, coro) -> object:  # noqa: ANN001 - any coroutine
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self, sock) -> None:  # noqa: ANN001 - a bound socket
        self._flowing = asyncio.Event()
        self._flowing.set()
        sock.listen(128)
        self._server = await asyncio.start_server(self._accepted, sock=sock)

    async def _close(self, stop_listening: bool) -> None:
        if stop_listening and self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if stop_listening:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _accepted(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        await self._flowing.wait()
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.add(server_w)
        await asyncio.gather(self._pipe(client_r, server_w, 0.0), self._pipe(server_r, client_w, self.delay),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                await self._flowing.wait()
                if not chunk:
                    break
                if delay:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
