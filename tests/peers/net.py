"""Small network helpers for the local protocol peers."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago (racy: prefer `bound_socket`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """Return a TCP socket bound to a free port on `host`, not yet listening."""
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and
    # without it multi-line replies (EHLO) stall 40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock
