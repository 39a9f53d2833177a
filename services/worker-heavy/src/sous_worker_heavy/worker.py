"""The heavy worker's Celery app (run with ``-P prefork -Q heavy --prefetch-multiplier 1``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import setup_logging

from sous_core.celery_app import create_celery_app
from sous_core.logs import configure_logging
from sous_core.tasks import HEAVY_PING_TASK

app = create_celery_app("sous-worker-heavy")


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()


@app.task(name=HEAVY_PING_TASK, ignore_result=False)
def ping() -> dict[str, Any]:
    """Answer from a pool child: proves the heavy pool takes work from its queue."""
    return {"hostname": socket.gethostname(), "pid": os.getpid()}
