"""Draining a deep queue: do the API's and the workers' memory stay flat?

Queues about ``--jobs`` fetch jobs of a local fast HTTP origin through the real API with
no worker running (``wrk`` at ``--connections`` connections until the database holds that
many; the requests in flight when it stops may add a few, so the count is read back), then
starts the fast workers (two gevent processes, as in the end-to-end benchmark) and
waits until every job has finished. Every second it samples the resident memory (RSS)
of the API process and of each worker process, Redis's ``used_memory`` and the count of
finished jobs; the API also answers one ``GET /v1/jobs?state=queued`` per sample, so it
serves reads while the queue drains.

"Flat" is judged from the samples: each process's RSS once the drain has warmed up
(a tenth of the jobs finished) against its RSS at the end and its peak. Reported per
process: RSS at warm-up, at the end, the peak, and end minus warm-up in MiB. A leak of even
one kilobyte per job would show as about 100 MiB over 100,000 jobs. With ``--plot`` the
samples are drawn to a PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(BENCH)]

from results import machine, now, report  # noqa: E402
from vs_baseline import Target, sous_finished, wrk  # noqa: E402

from support.stack import Origin, Stack, make_stack, wait_until  # noqa: E402

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (a worker's pool processes)."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{candidate}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            found += [child, *_children(child)]
    return found


@dataclass
class Sampler:
    """Samples memory and progress every ``interval`` seconds on a thread of its own."""

    stack: Stack
    api: Target
    pids: dict[str, int]
    redis_db: int
    interval: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def watch(self, name: str, pid: int) -> None:
        self.pids = {**self.pids, name: pid}

    def _run(self) -> None:
        finished = sous_finished(self.stack)
        cache = redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db)
        headers = {"Authorization": f"Bearer {self.api.key}"}
        started = time.perf_counter()
        with httpx.Client(base_url=self.api.url, headers=headers, timeout=30) as client:
            while not self._stop.wait(self.interval):
                read = time.perf_counter()
                client.get("/v1/jobs", params={"state": "queued", "limit": 20}).raise_for_status()
                sample: dict[str, Any] = {
                    "t": round(time.perf_counter() - started, 1),
                    "finished": finished(),
                    "list_ms": round((time.perf_counter() - read) * 1000, 1),
                    "redis_used_mib": round(int(cache.info("memory")["used_memory"]) / MIB, 1),
                }
                for name, pid in self.pids.items():
                    sample[f"{name}_rss_mib"] = round(rss_bytes(pid) / MIB, 1)
                self.samples.append(sample)
        cache.close()


def summarise(samples: list[dict[str, Any]], jobs: int, drain_start: float) -> dict[str, Any]:
    """Per process: RSS at warm-up (a tenth of the jobs finished), at the end, the peak.

    Workers start one after another: one that was not sampled yet when a tenth had
    finished (a short run, a slow start) is warm from its first sample.
    """
    draining = [s for s in samples if s["t"] >= drain_start]
    end = draining[-1]
    memory: dict[str, Any] = {}
    for key in end:
        if not key.endswith("_rss_mib") and key != "redis_used_mib":
            continue
        name = key.removesuffix("_rss_mib")
        sampled = [s for s in draining if key in s]
        warm = next((s for s in sampled if s["finished"] >= jobs // 10), sampled[0])
        peak = max(s[key] for s in samples if key in s)
        memory[name] = {
            "warm_mib": warm[key],
            "end_mib": end[key],
            "peak_mib": peak,
            "growth_mib": round(end[key] - warm[key], 1),
        }
    return memory


def count_jobs(stack: Stack) -> int:
    with psycopg.connect(stack.libpq_url()) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return int(row[0]) if row else 0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    origin = Origin()
    try:
        with make_stack(workdir) as stack:
            api = stack.start_api()
            target = Target("sous", api.url, "/v1/fetches", stack.create_key("bench"))
            redis_db = int(stack.env["SOUS_RESULT_BACKEND"].rsplit("/", 1)[1])
            sampler = Sampler(stack, target, {"api": api.proc.popen.pid}, redis_db)
            sampler.start()
            started = time.perf_counter()
            answered = wrk(
                target,
                {"url": f"{origin.url}/ok"},
                args.connections,
                seconds=int(args.timeout),
                until=lambda: count_jobs(stack) >= args.jobs,
            )
            queued_s = time.perf_counter() - started
            if set(answered["statuses"]) != {"202"}:
                raise RuntimeError(f"not every submission was accepted: {answered['statuses']}")
            time.sleep(1)  # requests wrk dropped in flight finish on the API
            jobs = count_jobs(stack)
            print(f"queued {jobs} jobs in {queued_s:.0f} s", file=sys.stderr)
            drain_started = time.perf_counter()
            drain_start_t = round(drain_started - started, 1)
            for n in range(args.workers):
                proc = stack.start_fast_worker(f"fast-{n}", concurrency=args.concurrency)
                sampler.watch(f"worker_{n}", proc.popen.pid)
            finished = sous_finished(stack)
            wait_until(lambda: finished() >= jobs, args.timeout, "every job", 1)
            drained_s = time.perf_counter() - drain_started
            time.sleep(2 * sampler.interval)  # a last sample with every job finished
            sampler.stop()
            with psycopg.connect(stack.libpq_url()) as conn:
                states = dict(
                    conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
                )
    finally:
        origin.close()
    samples = sampler.samples
    if args.plot:
        plot(samples, drain_start_t, args.plot)
    list_ms = sorted(s["list_ms"] for s in samples)
    return {
        "jobs": jobs,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "queue_s": round(queued_s, 1),
        "queue_req_per_s": round(jobs / queued_s, 1),
        "drain_s": round(drained_s, 1),
        "drain_jobs_per_s": round(jobs / drained_s, 1),
        "states": states,
        "memory": summarise(samples, jobs, drain_start_t),
        "list_queued_p50_ms": list_ms[len(list_ms) // 2],
        "list_queued_max_ms": list_ms[-1],
        "samples": len(samples),
    }


def plot(samples: list[dict[str, Any]], drain_start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, progress) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    times = [s["t"] for s in samples]
    for key in samples[-1]:
        if key.endswith("_mib"):
            memory.plot(
                [s["t"] for s in samples if key in s],
                [s[key] for s in samples if key in s],
                label=key.removesuffix("_mib").removesuffix("_rss"),
            )
    memory.set_ylabel("MiB")
    memory.legend(loc="upper left", fontsize="small")
    memory.set_title("Memory while a queue is filled, then drained")
    progress.plot(times, [s["finished"] for s in samples])
    progress.set_ylabel("jobs finished")
    progress.set_xlabel("seconds")
    for axes in (memory, progress):
        axes.axvline(drain_start, color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"plot written to {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs queued, then drained")
    parser.add_argument("--connections", type=int, default=50, help="concurrent submitters")
    parser.add_argument("--workers", type=int, default=2, help="fast worker processes")
    parser.add_argument("--concurrency", type=int, default=100, help="greenlets per worker")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the drain")
    parser.add_argument("--plot", type=Path, help="write the samples as a PNG here")
    parser.add_argument(
        "--no-save", action="store_true", help="print only; leave bench/results.json alone"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sous-drain-") as tmp:
        results = {"machine": machine(), "date": now(), **run(args, Path(tmp))}
    report("drain", results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
