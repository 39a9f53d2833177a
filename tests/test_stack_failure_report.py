"""A failed integration test shows the end of each process's log and of the broker's."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from support import stack
from support.stack import REPORT_LINES, Proc, failure_report


def printer(tmp_path: Path, lines: int) -> Proc:
    """A finished process that printed ``line 0`` … ``line N-1``."""
    proc = Proc.start(
        "printer",
        [sys.executable, "-c", f"for n in range({lines}): print(f'line {{n}}')"],
        {},
        tmp_path / "printer.log",
    )
    proc.popen.wait(30)
    return proc


def test_the_report_holds_the_end_of_each_process_log(tmp_path: Path) -> None:
    proc = printer(tmp_path, 100)

    report = failure_report([proc], datetime.now(UTC))

    assert f"----- printer (pid {proc.popen.pid}, exited 0) -----" in report
    lines = report.splitlines()
    assert lines[-REPORT_LINES:] == [f"line {n}" for n in range(100 - REPORT_LINES, 100)]
    assert "line 59\n" not in report


def test_the_report_holds_the_broker_log_since_the_stack_started_then_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rabbit@host.log").write_text(
        "2026-12-05 02:04:07.900000+00:00 [info] <0.1.0> before the stack\n"
        "2026-12-05 02:04:08.236761+00:00 [error] <0.2.0>     supervisor: x\n"
        "    continued on the next line\n"
        "2026-12-05 02:04:09.000000+00:00 [info] <0.3.0> later\n"
    )
    monkeypatch.setattr(stack, "RABBITMQ_LOGS", tmp_path)
    proc = printer(tmp_path, 1)

    report = failure_report([proc], datetime(2026, 12, 5, 2, 4, 8, 100000, tzinfo=UTC))

    assert report.splitlines() == [
        "----- RabbitMQ log -----",
        "2026-12-05 02:04:08.236761+00:00 [error] <0.2.0>     supervisor: x",
        "    continued on the next line",
        "2026-12-05 02:04:09.000000+00:00 [info] <0.3.0> later",
        f"----- printer (pid {proc.popen.pid}, exited 0) -----",
        "line 0",
    ]
