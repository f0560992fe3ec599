"""What the local HTTP(S) peers share: a threaded server at 127.0.0.1, TLS with a test certificate, a handler
that answers in one call, and running while the peer is entered."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Self

HOST = "127.0.0.1"


class PeerServer(ThreadingHTTPServer):
    """A threaded HTTP server on a free port, over TLS when given a context; each TLS handshake runs in its
    connection's thread, never in the accept loop, so a client that stalls it cannot block the others."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> None:
        super().__init__((HOST, 0), handler)
        self.context = context
        self.open_connections = 0  # client connections being served now (keep-alive ones included)
        self._count = threading.Lock()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        # a short poll interval: stop() waits for it, and tests start and stop many peers
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        self._counted(+1)
        try:
            if self.context is None:
                super().finish_request(request, client_address)
            else:
                self._finish_secured(request, client_address)
        finally:
            self._counted(-1)

    def _finish_secured(self, request: Any, client_address: Any) -> None:
        try:
            secured = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: nothing to serve
        try:
            super().finish_request(secured, client_address)
        finally:
            self.shutdown_request(secured)  # the server closes only the plain socket, which wrapping emptied

    def _counted(self, change: int) -> None:
        with self._count:
            self.open_connections += change


class Handler(BaseHTTPRequestHandler):
    """A peer's request handler: answers in one call, logs nothing."""

    def reply(self, status: int, body: bytes = b"", content_type: str | None = None,
              headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a whole answer."""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a JSON answer, or an empty one for document None."""
        if document is None:
            self.reply(status, headers=headers)
        else:
            self.reply(status, json.dumps(document).encode(), "application/json", headers)

    def log_message(self, *args: object) -> None:
        pass


class ServedPeer:
    """A peer whose server runs while the peer is entered (`with Peer(...) as peer:`)."""

    _server: PeerServer

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
