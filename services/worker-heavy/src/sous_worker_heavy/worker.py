"""The heavy worker's Celery app (run with ``-P prefork -Q heavy --prefetch-multiplier 1``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import celeryd_init, setup_logging

from sous_core.celery_app import create_celery_app
from sous_core.job_runner import register_job_task
from sous_core.logs import configure_logging
from sous_core.tasks import HEAVY_PING_TASK, TRANSCODE_TASK
from sous_worker_heavy.transcode_job import POOL_SIZE_VARIABLE, run_transcode

__all__ = ["app", "run_transcode"]

app = create_celery_app("sous-worker-heavy")


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()


@celeryd_init.connect
def _record_pool_size(options: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Tell the pool's children how many of them share the cores (sizes ffmpeg's threads)."""
    concurrency = (options or {}).get("concurrency") or os.cpu_count() or 1
    os.environ[POOL_SIZE_VARIABLE] = str(concurrency)


transcode_task = register_job_task(app, TRANSCODE_TASK, run_transcode)


@app.task(name=HEAVY_PING_TASK, ignore_result=False)
def ping() -> dict[str, Any]:
    """Answer from a pool child: proves the heavy pool takes work from its queue."""
    return {"hostname": socket.gethostname(), "pid": os.getpid()}
