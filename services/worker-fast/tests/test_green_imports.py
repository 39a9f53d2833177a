"""A gevent worker's broker reconnection waits without stopping its other greenlets."""

from __future__ import annotations

import subprocess
import sys

# What `celery -A ... worker -P gevent` does before it loads the app, then a reconnection
# wait (kombu's retry loop between two refused connections) beside a greenlet that ticks
# every 50 ms: it counts how long the rest of the process ran during the one-second wait.
PROGRAM = """
import sys
sys.argv = ["celery", "-A", "sous_worker_fast.worker", "worker", "-P", "gevent"]
from celery import maybe_patch_concurrency
maybe_patch_concurrency()
import gevent
from kombu.utils.functional import retry_over_time
from sous_worker_fast import green_imports

rebound = green_imports.rebind() if sys.argv[-1] == "gevent" and {rebind} else []
ticks = []

def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.05)

gevent.spawn(tick)
gevent.sleep(0)

def refused():
    raise ConnectionRefusedError

try:
    retry_over_time(
        refused, (ConnectionRefusedError,), max_retries=1,
        interval_start=1, interval_step=0, interval_max=1,
    )
except ConnectionRefusedError:
    pass
print(len(ticks), ",".join(rebound))
"""


def _run(rebind: bool) -> tuple[int, str]:
    # A fresh interpreter: monkey-patching must not leak into the test process.
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(rebind=rebind)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split(maxsplit=1)
    return int(out[0]), out[1] if len(out) > 1 else ""


def test_the_reconnection_wait_lets_other_greenlets_run() -> None:
    ticks, rebound = _run(rebind=True)
    assert "kombu.utils.functional.sleep -> time.sleep" in rebound
    assert ticks >= 10, f"other greenlets ran {ticks} times in a one-second wait"


def test_celery_gevent_start_up_leaves_kombu_a_blocking_sleep() -> None:
    # Why rebind() exists: without it the same wait stops every greenlet. If this fails
    # after an upgrade, Celery or gevent fixed the import order and rebind() can go.
    ticks, _ = _run(rebind=False)
    assert ticks <= 2, f"other greenlets ran {ticks} times: the wait no longer blocks"
