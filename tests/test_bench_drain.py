"""The drain benchmark's memory summary (``bench/drain.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from drain import summarise


def test_a_worker_sampled_only_after_a_tenth_finished_is_warm_from_its_first_sample() -> None:
    # Queueing, then the drain from t=10: worker_0 is up at once, worker_1 a little later,
    # after a tenth of the 100 jobs had finished.
    samples = [
        {"t": 5.0, "finished": 0, "api_rss_mib": 100.0, "redis_used_mib": 1.0},
        {"t": 10.0, "finished": 0, "api_rss_mib": 101.0, "redis_used_mib": 1.0,
         "worker_0_rss_mib": 90.0},
        {"t": 11.0, "finished": 12, "api_rss_mib": 102.0, "redis_used_mib": 1.1,
         "worker_0_rss_mib": 95.0},
        {"t": 12.0, "finished": 40, "api_rss_mib": 102.0, "redis_used_mib": 1.1,
         "worker_0_rss_mib": 96.0, "worker_1_rss_mib": 80.0},
        {"t": 13.0, "finished": 100, "api_rss_mib": 103.0, "redis_used_mib": 1.2,
         "worker_0_rss_mib": 96.5, "worker_1_rss_mib": 85.0},
    ]  # fmt: skip

    memory = summarise(samples, jobs=100, drain_start=10.0)

    assert memory["worker_0"] == {
        "warm_mib": 95.0, "end_mib": 96.5, "peak_mib": 96.5, "growth_mib": 1.5,
    }  # fmt: skip
    assert memory["worker_1"] == {
        "warm_mib": 80.0, "end_mib": 85.0, "peak_mib": 85.0, "growth_mib": 5.0,
    }  # fmt: skip
    assert memory["api"]["warm_mib"] == 102.0
    assert memory["api"]["peak_mib"] == 103.0
    assert memory["redis_used_mib"]["growth_mib"] == 0.1
