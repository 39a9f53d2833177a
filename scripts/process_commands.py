"""The command line of each Sous process: what `make run` starts and the tests run.

Pool type, concurrency and queues belong on the command line, not in shared config.
"""

from __future__ import annotations

from collections.abc import Callable


def api() -> list[str]:
    return ["sous-api"]


def worker_fast(concurrency: int = 100, name: str = "fast@%h") -> list[str]:
    """I/O-bound jobs: one process, many greenlets; also serves the maintenance queue."""
    return [
        "celery", "-A", "sous_worker_fast.worker", "worker",
        "-P", "gevent", "-c", str(concurrency), "-Q", "fast,maintenance", "-n", name,
    ]  # fmt: skip


def worker_heavy(concurrency: int = 2, name: str = "heavy@%h") -> list[str]:
    """CPU-bound jobs: one process per core, each taking one task at a time."""
    return [
        "celery", "-A", "sous_worker_heavy.worker", "worker",
        "-P", "prefork", "-c", str(concurrency), "-Q", "heavy", "--prefetch-multiplier", "1",
        "-n", name,
    ]  # fmt: skip


def scheduler() -> list[str]:
    """Celery beat with Sous's scheduler: ticks are claimed in the database, so a second
    replica started by mistake fires nothing twice."""
    return ["celery", "-A", "sous_scheduler.beat", "beat"]


def flower(port: str) -> list[str]:
    return [
        "celery",
        "-A",
        "sous_scheduler.beat",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
    ]


def flower_container(port: int = 5555, basic_auth: str | None = None) -> list[str]:
    """Flower in a container (Helm chart, compose.yaml): listens on every interface and
    finds the broker in ``CELERY_BROKER_URL``, so it needs no Sous code in its image."""
    argv = ["celery", "flower", "--address=0.0.0.0", f"--port={port}"]
    if basic_auth is not None:
        argv.append(f"--basic-auth={basic_auth}")
    return argv


#: The processes every deployment runs, by service (and image) name.
SERVICES: dict[str, Callable[[], list[str]]] = {
    "api": api,
    "worker-fast": worker_fast,
    "worker-heavy": worker_heavy,
    "scheduler": scheduler,
}


def container_commands() -> dict[str, list[str]]:
    """The command line of each service's container with its default concurrency: the
    images' CMD, and what the Helm chart and compose.yaml run."""
    return {service: command() for service, command in SERVICES.items()}


def mail_sink(port: int) -> list[str]:
    """Development only: a local SMTP server that logs the messages it gets."""
    return ["python", "scripts/mail_sink.py", "--port", str(port), "--show-body"]
