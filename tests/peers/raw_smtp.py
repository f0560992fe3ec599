"""A bare-socket SMTP server that leaves after DATA in one of two ways, which aiosmtpd cannot do.

`reset`: it waits until the whole message and its final "." have arrived, then closes without reading
them, so the kernel answers with a reset (RST), as a server that stops before reading does.
`close`: it reads the whole message and its final ".", then closes cleanly (FIN) without a reply.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Literal

from tests.peers.net import bound_socket

Ending = Literal["reset", "close"]
_END = b"\r\n.\r\n"


class RawSmtpPeer:
    """One-connection-at-a-time SMTP peer on 127.0.0.1 that never answers the end of DATA."""

    def __init__(self, ending: Ending) -> None:
        self.ending = ending
        self._sock = bound_socket()
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.host, self.port = self._sock.getsockname()[:2]

    def __enter__(self) -> "RawSmtpPeer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(b"220 raw ESMTP\r\n")
        reader = conn.makefile("rb")
        while True:
            line = reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-raw\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                self._end_of_data(conn, reader)
                return
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 OK\r\n")

    def _end_of_data(self, conn: socket.socket, reader) -> None:  # noqa: ANN001 - a buffered socket file
        if self.ending == "close":
            data = b""
            while not data.endswith(_END):
                chunk = reader.readline()
                if not chunk:
                    return
                data += chunk
            conn.shutdown(socket.SHUT_RDWR)
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the whole message is in the kernel's buffer, none of it read
            if _END in conn.recv(1 << 20, socket.MSG_PEEK):
                break
            time.sleep(0.01)
        time.sleep(0.05)
