"""An email's send and its record finish even when the task's greenlet is killed."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
from gevent import monkey
monkey.patch_all()
import gevent
from sous_worker_fast.email_jobs import run_to_completion

done = []

def send():
    gevent.sleep(0.3)  # the SMTP exchange
    done.append("sent and recorded")
    return "ok"

task = gevent.spawn(run_to_completion, send)
gevent.sleep(0.05)
task.kill(block=True, timeout=5)  # what Celery does when the broker connection drops
print(done, type(task.value).__name__)  # gevent returns GreenletExit as a killed greenlet's value
"""


def test_killing_the_task_waits_for_the_send_and_its_record() -> None:
    # A fresh interpreter: monkey-patching must not leak into the test process.
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.strip() == "['sent and recorded'] GreenletExit"


def test_without_gevent_the_work_just_runs() -> None:
    from sous_worker_fast.email_jobs import run_to_completion

    assert run_to_completion(lambda: 42) == 42


TWICE = PROGRAM.replace(
    "task.kill(block=True, timeout=5)  # what Celery does when the broker connection drops",
    "task.kill(block=False)\ngevent.sleep(0.05)\ntask.kill(block=True, timeout=5)  # a second loss",
)


def test_a_second_kill_does_not_cut_the_wait_short() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TWICE], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.strip() == "['sent and recorded'] GreenletExit"
