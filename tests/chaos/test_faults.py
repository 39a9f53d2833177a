"""The short fault suite: every fault once under a small mixed load; nothing lost or doubled."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.harness import ChaosConfig, run_chaos

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_every_fault_once_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = run_chaos(ChaosConfig(seed=20261122, rounds=1, rate=2.5), tmp_path / "chaos")
    print(report.table())
    (tmp_path / "chaos" / "report.json").write_text(report.to_json())
    assert report.counts["accepted (202)"] > 100, report.table()
    assert report.counts["lost"] == 0, report.table()
    assert report.counts["duplicated"] == 0, report.table()
    assert report.ok, report.table()
