"""The HTTP endpoint of a worker process group or a scheduler: /metrics, /healthz and /readyz.

/healthz answers as long as the process serves at all; /readyz answers 200 only while PostgreSQL and
RabbitMQ are reachable (workers/health.py, bounded by DESKMAIL_HEALTH_TIMEOUT).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deskmail.workers import health, metrics
from deskmail.workers.config import Config

log = logging.getLogger(__name__)


class Exposition:
    """What /metrics returns: this process's (or the group's) metrics plus the ledger gauges."""

    def __init__(self, config: Config, store) -> None:  # noqa: ANN001 - workers.store.Store
        import prometheus_client as prom
        self.config, self.prom = config, prom
        self.ledger = prom.CollectorRegistry(auto_describe=False)
        self.ledger.register(metrics.LedgerCollector(store, config.heartbeat_max_age))

    def render(self) -> bytes:
        """The exposition text."""
        prom, directory = self.prom, metrics.multiprocess_dir()
        if directory:
            from prometheus_client import multiprocess
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            own = prom.generate_latest(registry)
        else:
            own = prom.generate_latest(prom.REGISTRY)
        return own + prom.generate_latest(self.ledger)


def handler_for(config: Config, exposition: Exposition) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one configuration."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            """Serve the three paths; anything else is 404."""
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exposition.prom.CONTENT_TYPE_LATEST, exposition.render())
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/readyz":
                report = health.run(config, consumers=False, heartbeat=False)
                body = json.dumps(report.as_dict()).encode() + b"\n"
                self._send(200 if report.ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            """Requests are logged at debug level only (Prometheus scrapes every few seconds)."""
            log.debug("metrics endpoint: " + fmt, *args)

    return Handler


def ledger_store(config: Config):  # noqa: ANN201 - workers.store.Store
    """A small store of the endpoint's own: a scrape while PostgreSQL is down reports deskmail_ledger_up 0
    within DESKMAIL_HEALTH_TIMEOUT instead of waiting for a busy worker pool."""
    from deskmail.workers.store import Store, open_pool
    return Store(open_pool(config.database_url, 2, name="deskmail-metrics", timeout=config.health_timeout))


def server(config: Config, store) -> ThreadingHTTPServer:  # noqa: ANN001 - workers.store.Store
    """A bound server on DESKMAIL_METRICS_HOST:DESKMAIL_METRICS_PORT (not yet serving)."""
    handler = handler_for(config, Exposition(config, store))
    httpd = ThreadingHTTPServer((config.metrics_host, config.metrics_port), handler)
    httpd.daemon_threads = True
    log.info("metrics endpoint on http://%s:%s/metrics", config.metrics_host, httpd.server_address[1])
    return httpd


def serve_in_thread(config: Config, store) -> ThreadingHTTPServer:  # noqa: ANN001 - workers.store.Store
    """Start the endpoint in a daemon thread of this process (the scheduler's way); returns the server."""
    httpd = server(config, store)
    threading.Thread(target=httpd.serve_forever, name="metrics-endpoint", daemon=True).start()
    return httpd
