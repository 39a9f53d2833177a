"""Prometheus metrics across processes: multiprocess mode for forking servers, and scraping.

A prefork worker (or an API with several uvicorn processes) counts in many processes;
prometheus-client's multiprocess mode has each process write its values to files in one
folder, and a scrape sums them. :func:`prepare_multiprocess` must run in the parent
before any metric is created (before :mod:`sous_core.metrics` is imported), and wipes the
folder so a restarted pod does not count a previous run's tasks.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.registry import Collector

logger = logging.getLogger("sous.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Files of processes' live gauges: ``gauge_livesum_1234.db`` and the like.
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def prepare_multiprocess(folder: str = "") -> Path:
    """Turn on multiprocess mode for this process and its children, in an emptied folder.

    ``folder`` empty: a new folder under the system temp dir, removed when this process exits.
    """
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():
            if entry.is_file() and entry.suffix == ".db":
                entry.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="sous-metrics-"))
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:  # not in a forked child that exits
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    os.environ[MULTIPROC_ENV] = str(path)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    logger.debug("prometheus multiprocess folder %s", path)
    return path


def multiprocess_dir() -> Path | None:
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(folder: Path) -> list[int]:
    """Drop the live gauges of processes that died without saying so (SIGKILLed children).

    Counters and histograms of dead processes stay: their work happened.
    """
    dead = set()
    for entry in folder.iterdir():
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    return sorted(dead)


def scrape(extra: Iterable[Collector] = ()) -> bytes:
    """This process's metrics (all processes' in multiprocess mode) in the text format."""
    folder = multiprocess_dir()
    if folder is None:
        if not extra:
            return generate_latest(REGISTRY)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Delegate(REGISTRY))
    else:
        forget_dead_processes(folder)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=str(folder))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _Delegate(Collector):
    """Puts the default registry's metrics into a scrape registry with extra collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()
