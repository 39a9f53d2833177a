"""Logs, metrics and traces for the Celery processes (workers and the scheduler).

Each service's Celery module calls one function here at import time; it connects the
Celery signals that set everything up at the right moment of the process's life:
logging when Celery configures it, the metrics server in the main process once it
starts, tracing in the process that runs tasks (every pool child of a prefork worker),
and once a process is ready its start-up objects are frozen out of the garbage
collector's way (``heap``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery.signals import (
    beat_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client.registry import Collector

from sous_core import celery_metrics, heap, telemetry
from sous_core.logs import configure_logging
from sous_core.metrics_server import MetricsServer, start_metrics_server
from sous_core.settings import get_settings

logger = logging.getLogger("sous.observability")

_servers: list[MetricsServer] = []


def _serve_metrics(service: str, collectors: Sequence[Collector] = ()) -> None:
    settings = get_settings()
    server = start_metrics_server(settings.metrics_host, settings.metrics_port, service, collectors)
    if server is not None:
        _servers.append(server)


def _start_tracing(service: str) -> None:
    if telemetry.configure_tracing(service):
        telemetry.instrument_celery()


def observe_worker(service: str, *, prefork: bool) -> None:
    """Set up a worker: JSON/text logs, task metrics, ``/metrics`` + ``/healthz``, traces.

    ``prefork``: tasks run in forked pool children, which start their own tracing.
    """
    celery_metrics.install_worker_metrics()

    @setup_logging.connect(weak=False)
    def _logging(**_kwargs: Any) -> None:
        configure_logging(service)

    @worker_init.connect(weak=False)
    def _main_process_started(**_kwargs: Any) -> None:
        _serve_metrics(service)
        if not prefork:
            _start_tracing(service)

    @worker_ready.connect(weak=False)
    def _main_process_ready(**_kwargs: Any) -> None:
        heap.freeze_startup_objects()

    @worker_shutdown.connect(weak=False)
    def _main_process_stopping(**_kwargs: Any) -> None:
        telemetry.shutdown_tracing()

    if prefork:

        @worker_process_init.connect(weak=False)
        def _child_started(**_kwargs: Any) -> None:
            _start_tracing(service)
            heap.freeze_startup_objects()

        @worker_process_shutdown.connect(weak=False)
        def _child_stopping(**_kwargs: Any) -> None:
            telemetry.shutdown_tracing()


def observe_scheduler(service: str, collectors: Sequence[Collector] = ()) -> None:
    """Set up the scheduler (Celery beat): logs, publish metrics, ``/metrics``, traces."""
    celery_metrics.install_publisher_metrics()

    @setup_logging.connect(weak=False)
    def _logging(**_kwargs: Any) -> None:
        configure_logging(service)

    @beat_init.connect(weak=False)
    def _started(**_kwargs: Any) -> None:
        _serve_metrics(service, collectors)
        _start_tracing(service)
