"""The fast worker's batch recounts: one recount for the children that finished together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CORE_TESTS = Path(__file__).resolve().parents[3] / "libs" / "core" / "tests"

GREEN_PROGRAM = """
from gevent import monkey
monkey.patch_all()
import sys
import gevent
from sqlalchemy.orm import Session
from sous_core import jobs
from sous_core.db.engine import make_engine
from sous_core.db.migrate import upgrade
from sous_core.states import JobState
from sous_worker_fast.coalesced_settling import CoalescedSettler
sys.path.insert(0, {tests!r})
from test_batches import children, running_batch

url = "sqlite:///" + {db!r}
upgrade(url)
engine = make_engine(url)
with Session(engine) as session:
    parent = running_batch(session, [f"https://x.example/{{i}}" for i in range(40)])
    ids = [child.id for child in children(session, parent)]

if {coalesce!r}:
    jobs.defer_batch_settling(CoalescedSettler().request)
recounts = []
settle = jobs.batches.settle
jobs.batches.settle = lambda bind, parent_id: recounts.append(parent_id) or settle(bind, parent_id)

def finish(child_id):
    with Session(engine) as session:
        jobs.transition(session, child_id, JobState.RUNNING)
        jobs.finish_job(session, child_id, JobState.SUCCEEDED, result={{"ok": True}})
        session.commit()
    gevent.sleep(0.001)

gevent.joinall([gevent.spawn(finish, child_id) for child_id in ids])
gevent.sleep(0.5)
with Session(engine) as session:
    done = jobs.get_job(session, parent.id)
    print(done.state, done.children_finished, len(recounts))
"""


def _finish_40_children(tmp_path: Path, coalesce: bool) -> tuple[str, int, int]:
    # A fresh interpreter: monkey-patching must not leak into the test process.
    program = GREEN_PROGRAM.format(
        tests=str(CORE_TESTS), db=str(tmp_path / "b.db"), coalesce=coalesce
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


def test_children_finishing_together_get_a_few_recounts_and_the_batch_finishes(
    tmp_path: Path,
) -> None:
    state, finished, recounts = _finish_40_children(tmp_path, coalesce=True)
    assert (state, finished) == ("succeeded", 40)
    assert 1 <= recounts < 40, f"{recounts} recounts for 40 children"


def test_without_the_settler_every_child_recounts_its_batch(tmp_path: Path) -> None:
    # The premise of the one above: each commit recounts at once.
    state, finished, recounts = _finish_40_children(tmp_path, coalesce=False)
    assert (state, finished) == ("succeeded", 40)
    assert recounts == 40
