"""A local HTTP proxy that opens CONNECT tunnels, as a corporate egress proxy does, recording each target and
refusing the ones it is told to (403)."""

from __future__ import annotations

import select
import socket
import socketserver
import threading

from tests.peers.http_server import HOST
from tests.peers.inbox import Inbox


class ProxyPeer:
    """CONNECT host:port tunnels on 127.0.0.1; anything but CONNECT is answered 405."""

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.refused = refused  # "host:port" targets answered 403
        self.tunnels: Inbox[str] = Inbox("tunnel")  # every CONNECT target asked for, in order
        peer = self

        class Tunnel(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.readline(1024).decode("latin-1").split()
                while self.rfile.readline(1024).strip():
                    pass  # headers
                if len(request) != 3 or request[0] != "CONNECT":
                    self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                target = request[1]
                peer.tunnels.add(target)
                if target in peer.refused:
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                host, _, port = target.rpartition(":")
                try:
                    upstream = socket.create_connection((host, int(port)), timeout=10)
                except OSError:
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                with upstream:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    _pipe(self.connection, upstream)

        self._server = socketserver.ThreadingTCPServer((HOST, 0), Tunnel)
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        """The proxy URL, as HTTPS_PROXY would give it."""
        return f"http://{HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> "ProxyPeer":
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    while True:
        readable, _, _ = select.select(sockets, [], [], 30)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            (upstream if source is client else client).sendall(data)
