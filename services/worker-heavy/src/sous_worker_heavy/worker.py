"""The heavy worker's Celery app (run with ``-P prefork -Q heavy --prefetch-multiplier 1``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import celeryd_init

from sous_core.celery_app import create_celery_app
from sous_core.job_runner import register_job_task
from sous_core.metrics_process import prepare_multiprocess
from sous_core.observability import observe_worker
from sous_core.settings import get_settings
from sous_core.tasks import HEAVY_PING_TASK, TRANSCODE_TASK
from sous_worker_heavy.transcode_job import POOL_SIZE_VARIABLE, run_transcode

__all__ = ["app", "run_transcode"]

app = create_celery_app("sous-worker-heavy")
observe_worker("sous-worker-heavy", prefork=True)


@celeryd_init.connect
def _before_pool_starts(options: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Prepare what the pool's children inherit: metrics shared through files, pool size."""
    settings = get_settings()
    # Before any labelled metric value exists, so every one of them lives in the shared
    # folder and a scrape of the main process sums all children (dead ones included).
    prepare_multiprocess(settings.metrics_multiproc_dir)
    # Lower CPU priority for the pool and its ffmpeg processes (inherited on fork).
    if settings.heavy_worker_nice:
        os.nice(settings.heavy_worker_nice)
    # How many children share the cores (sizes ffmpeg's threads).
    concurrency = (options or {}).get("concurrency") or os.cpu_count() or 1
    os.environ[POOL_SIZE_VARIABLE] = str(concurrency)


transcode_task = register_job_task(app, TRANSCODE_TASK, run_transcode)


@app.task(name=HEAVY_PING_TASK, ignore_result=False)
def ping() -> dict[str, Any]:
    """Answer from a pool child: proves the heavy pool takes work from its queue."""
    return {"hostname": socket.gethostname(), "pid": os.getpid()}
