"""A local SMTP sink (aiosmtpd): accepts every message and stores it as an .eml file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

_SEQUENCE_NAME = re.compile(r"^(\d{6,})-[0-9a-f]{8}\.eml$")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(rb"\r?\n[ \t]+")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_STORE_FAILED = "451 4.3.0 sink could not store the message, try again later"


def message_id(data: bytes) -> str | None:
    """Return the Message-ID header of raw message bytes (unfolded, stripped), or None."""
    end = _HEADER_END.search(data)
    head = data[: end.start()] if end else data
    match = _MESSAGE_ID.search(_FOLD.sub(b" ", head))
    return match.group(1).decode("ascii", errors="replace") if match else None


def _last_sequence(directory: Path) -> int:
    """Return the highest sequence number of .eml files already in `directory` (0 if none)."""
    numbers = (_SEQUENCE_NAME.match(entry.name) for entry in os.scandir(directory))
    return max((int(match.group(1)) for match in numbers if match), default=0)


def _write_atomically(directory: Path, name: str, data: bytes) -> None:
    """Write `data` to directory/name through a temporary file and a rename."""
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, directory / name)


def _free_port(host: str) -> int:
    """Return a port on `host` that was free a moment ago (aiosmtpd cannot listen on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _SinkHandler:
    """aiosmtpd handler that hands every message to its MailSink."""

    def __init__(self, sink: "MailSink") -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message and answer 250, or 451 if it could not be stored."""
        return self.sink._accept(envelope.original_content or b"")


class MailSink:
    """An SMTP server without auth or TLS that stores and counts what it receives."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        directory: Path | None = None,
        *,
        write_files: bool = True,
        track: bool = False,
    ) -> None:
        """Configure the sink; port 0 picks a free port at `start()`."""
        if write_files and directory is None:
            raise ValueError("MailSink needs a directory when write_files is on")
        self.host = host
        self._requested_port = port
        self._port = port
        self.directory = Path(directory) if directory is not None else None
        self.write_files = write_files
        self.track = track
        self._lock = threading.Lock()
        self._count = 0
        self._sequence = 0
        self._accepted_at: dict[str, float] = {}
        self._controller: Controller | None = None

    @property
    def port(self) -> int:
        """The TCP port (the chosen one once started with port 0)."""
        return self._port

    @property
    def count(self) -> int:
        """How many messages were accepted since start."""
        with self._lock:
            return self._count

    @property
    def accepted_at(self) -> dict[str, float]:
        """A copy of Message-ID -> time.time() of acceptance (filled only with track=True)."""
        with self._lock:
            return dict(self._accepted_at)

    def start(self) -> "MailSink":
        """Start listening in a background thread."""
        if self.write_files:
            assert self.directory is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sequence = _last_sequence(self.directory)
        if self._requested_port == 0:
            self._port = _free_port(self.host)
        self._controller = Controller(
            _SinkHandler(self), hostname=self.host, port=self._port, server_hostname="deskmail-sink"
        )
        self._controller.start()
        logger.info("sink started", extra={"host": self.host, "port": self._port})
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            logger.info("sink stopped", extra={"count": self.count})

    def __enter__(self) -> "MailSink":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept(self, data: bytes) -> str:
        """Store one message and return the SMTP reply for it."""
        if self.write_files:
            try:
                self._store(data)
            except OSError:
                logger.exception("sink could not store a message", extra={"directory": str(self.directory)})
                return _STORE_FAILED
        mid = message_id(data) if self.track else None
        with self._lock:
            self._count += 1
            if mid is not None:
                self._accepted_at[mid] = time.time()
        return "250 OK"

    def _store(self, data: bytes) -> None:
        """Write one message as `NNNNNN-<hash8>.eml`."""
        assert self.directory is not None
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        name = f"{sequence:06d}-{hashlib.sha256(data).hexdigest()[:8]}.eml"
        _write_atomically(self.directory, name, data)


def run(host: str, port: int, directory: Path, as_json: bool = False) -> None:
    """Run a MailSink until SIGINT or SIGTERM; says where it listens (one JSON object with `as_json`)."""
    stopping = threading.Event()
    previous = _install_stop_handlers(stopping)
    try:
        with MailSink(host, port, directory) as sink:
            if as_json:
                print(json.dumps({"host": host, "port": sink.port, "dir": str(directory)}), flush=True)
            else:
                print(f"deskmail sink listening on {host}:{sink.port}, writing to {directory}", flush=True)
            while not stopping.wait(0.5):
                pass
            logger.info("sink stopping on signal", extra={"count": sink.count})
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _install_stop_handlers(stopping: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set `stopping`; return the handlers they replace."""

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()  # nothing else here: logging from a signal handler can deadlock

    return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
