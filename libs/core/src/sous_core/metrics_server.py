"""A small HTTP server for the workers and the scheduler: ``/metrics`` and ``/healthz``.

``/healthz`` answers while the process is alive and does not touch the broker, so a
Kubernetes liveness probe never restarts a busy worker or one waiting for RabbitMQ.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from sous_core.metrics_process import scrape

logger = logging.getLogger("sous.metrics")


class MetricsServer:
    """Serves in a daemon thread (a greenlet under gevent) until :meth:`close`."""

    def __init__(self, host: str, port: int, collectors: Sequence[Collector] = ()) -> None:
        self.collectors = tuple(collectors)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        body = scrape(server.collectors)
                    except Exception:
                        logger.exception("collecting metrics failed")
                        self._send(500, b"collecting metrics failed\n", "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    self._send(200, json.dumps({"status": "ok"}).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass  # Prometheus scrapes every few seconds: not worth a log line each.

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="sous-metrics", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_metrics_server(
    host: str, port: int, service: str, collectors: Sequence[Collector] = ()
) -> MetricsServer | None:
    """Start serving, or log why not: a metrics port in use must not stop the worker."""
    if port == 0:
        logger.info("%s: metrics server off (SOUS_METRICS_PORT=0)", service)
        return None
    try:
        server = MetricsServer(host, port, collectors)
    except OSError as exc:
        logger.error(
            "%s: cannot serve metrics on %s:%s (%s); set SOUS_METRICS_PORT to a free port",
            service,
            host,
            port,
            exc,
        )
        return None
    logger.info("%s: metrics on http://%s:%s/metrics", service, host, server.port)
    return server
