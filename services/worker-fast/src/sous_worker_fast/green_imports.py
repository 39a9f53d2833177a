"""Make the blocking calls Celery's gevent start-up leaves behind cooperative again.

``celery worker -P gevent`` monkey-patches the standard library before it loads the
app, but not early enough for everything: while gevent patches ``threading`` it walks
every live object, touches a lazy Celery proxy, and that imports ``celery.app`` and
``kombu`` before ``time`` and ``queue`` are patched. ``kombu.utils.functional`` then
holds the real ``time.sleep``, ``kombu.resource`` the real ``queue.LifoQueue``.

The first is what a broker outage calls between reconnection attempts: the whole
process stopped for up to seconds at a time, every greenlet with it — jobs' database
writes timed out, their heartbeats stopped (so the reaper took jobs that were still
running) and an email's "sent" record was written too late to stop its redelivered
message from sending it again. :func:`rebind` points such names at the patched
objects, as if the modules had been imported after the patch.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("sous.worker")

#: Packages whose modules may be imported during the patch and are rebound.
PACKAGES = ("celery", "kombu", "amqp", "billiard", "vine")


def _stale_originals() -> dict[int, tuple[Any, Any, str]]:
    """``id(original) -> (original, patched, "module.name")`` for every patched callable."""
    from gevent import monkey

    stale: dict[int, tuple[Any, Any, str]] = {}
    for module_name, saved in monkey.saved.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name, original in saved.items():
            patched = getattr(module, name, None)
            if callable(original) and patched is not None and patched is not original:
                stale[id(original)] = (original, patched, f"{module_name}.{name}")
    return stale


def rebind(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Point names in ``packages`` that hold an unpatched blocking call at the patched one.

    Does nothing unless gevent patched ``time`` (a gevent worker). Returns what it rebound,
    as ``"module.name -> original"``.
    """
    try:
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency of this worker
        return []
    if not is_module_patched("time"):
        return []
    stale = _stale_originals()
    rebound: list[str] = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".", 1)[0] not in packages:
            continue
        for name, value in list(vars(module).items()):
            hit = stale.get(id(value))
            if hit is not None and hit[0] is value:
                setattr(module, name, hit[1])
                rebound.append(f"{module_name}.{name} -> {hit[2]}")
    if rebound:
        logger.debug("made cooperative: %s", ", ".join(rebound))
    return rebound
