"""The rollout invariant counts tasks a stopping worker ran, not messages it handed back."""

from __future__ import annotations

from dataclasses import dataclass

from chaos.harness import Chaos

RUNNING = "b54e7191-57fb-47ec-8588-9acd6e5f4522"
LATE = "4e00e800-bc18-4adf-a973-d1068ab82087"


@dataclass
class FakeLog:
    text: str

    def log(self) -> str:
        return self.text


def worker_log(*after_shutdown: str) -> FakeLog:
    before = (
        f"2026-12-04 17:55:49,000 INFO    celery.worker.strategy: "
        f"Task sous.transcode[{RUNNING}] received\n"
        "worker: Warm shutdown (MainProcess)\n"
    )
    return FakeLog(before + "".join(line + "\n" for line in after_shutdown))


def test_a_message_received_during_shutdown_and_handed_back_is_not_taken() -> None:
    log = worker_log(
        f"2026-12-04 17:55:50,433 INFO    celery.worker.strategy: "
        f"Task sous.transcode[{LATE}] received",
        f"2026-12-04 17:55:50,446 INFO    sous.jobs: job {RUNNING} succeeded in 0.354s",
        f"2026-12-04 17:55:50,447 INFO    celery.app.trace: "
        f"Task sous.transcode[{RUNNING}] succeeded in 0.35s: None",
    )
    assert Chaos._received_after_warm_shutdown(log) == 0  # type: ignore[arg-type]


def test_a_task_run_after_the_shutdown_began_is_taken() -> None:
    log = worker_log(
        f"2026-12-04 17:55:50,433 INFO    celery.worker.strategy: "
        f"Task sous.transcode[{LATE}] received",
        f"2026-12-04 17:55:51,000 INFO    sous.jobs: job {LATE} succeeded in 0.5s [job={LATE}]",
    )
    assert Chaos._received_after_warm_shutdown(log) == 1  # type: ignore[arg-type]


def test_a_worker_that_was_never_stopped_took_nothing_late() -> None:
    log = FakeLog(f"INFO Task sous.transcode[{LATE}] received\nINFO job {LATE} succeeded\n")
    assert Chaos._received_after_warm_shutdown(log) == 0  # type: ignore[arg-type]
