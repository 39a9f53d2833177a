"""Sous side by side with the hand-rolled baseline (``bench/baseline``), same machine, same run.

* enqueue: ``wrk`` POSTs a fetch job at C concurrent connections for S seconds, Sous and
  the baseline alternating, R runs each (no workers run, so only the submit path is
  measured). Sous commits the job row and waits for RabbitMQ's publisher confirm before
  it answers 202; the baseline's ``.delay()`` does neither. Reported: req/s (median of
  runs) and p50/p95/p99 latency (median of runs).
* end to end: N fetch jobs of a local fast HTTP origin, submitted at C concurrent
  keep-alive connections (``submitter.py``, a minimal client that is not the ceiling)
  while the workers run; timed from the first submit until every job has finished.
  Workers get the same cores: Sous two gevent fast-worker processes, the baseline one
  prefork worker with its default concurrency (one process per core).

Each side gets a fresh RabbitMQ vhost, Redis DB (and for Sous a database) per benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import uvloop

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(BENCH)]

from results import machine, now, report  # noqa: E402
from submitter import post_all  # noqa: E402

from support.stack import (  # noqa: E402
    BIN,
    Origin,
    Proc,
    Stack,
    free_port,
    make_stack,
    rabbitmqctl,
    stop_all,
    wait_until,
)

WRK_SCRIPT = BENCH / "wrk" / "post_json.lua"


@dataclass
class Target:
    """One side of the comparison: where to POST a fetch job and with which key."""

    name: str
    url: str
    path: str
    key: str = ""


# --- the baseline's processes ----------------------------------------------------------


@dataclass
class Baseline:
    env: dict[str, str]
    workdir: Path
    redis_db: int
    processes: list[Proc]

    def start_api(self) -> str:
        port = free_port()
        # As the tutorials run it: `uvicorn main:app`, access log on (Sous logs each request too).
        argv = [str(BIN / "uvicorn"), "baseline.app:api", "--port", str(port)]
        proc = Proc.start("baseline-api", argv, self.env, self.workdir / "baseline-api.log")
        self.processes.append(proc)
        url = f"http://127.0.0.1:{port}"

        def alive() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"the baseline API exited:\n{proc.log()}")
            try:
                return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(alive, 30, "the baseline API")
        return url

    def start_worker(self) -> Proc:
        # As the tutorials run it: default pool and concurrency, INFO logs (Sous logs at INFO too).
        argv = [str(BIN / "celery"), "-A", "baseline.app", "worker", "--loglevel=INFO"]
        proc = Proc.start("baseline-worker", argv, self.env, self.workdir / "baseline-worker.log")
        self.processes.append(proc)
        proc.wait_for_log(r"ready\.", 60)
        return proc

    def finished(self) -> int:
        client = redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def states(self) -> dict[str, int]:
        client = redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db)
        try:
            counts: dict[str, int] = {}
            for key in client.scan_iter("celery-task-meta-*", count=1000):
                raw = client.get(key)
                state = json.loads(raw)["status"] if raw else "missing"
                counts[state] = counts.get(state, 0) + 1
            return counts
        finally:
            client.close()


@contextlib.contextmanager
def baseline_stack(workdir: Path) -> Iterator[Baseline]:
    vhost = f"baseline_{secrets.token_hex(4)}"
    redis_db = 8 + secrets.randbelow(8)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    env = {
        **os.environ,
        "PYTHONPATH": str(BENCH),
        "BASELINE_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "BASELINE_RESULT_BACKEND": f"redis://127.0.0.1:6379/{redis_db}",
    }
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    client.flushdb()
    baseline = Baseline(env, workdir, redis_db, [])
    try:
        yield baseline
    finally:
        stop_all(baseline.processes)
        rabbitmqctl("delete_vhost", vhost)
        client.flushdb()
        client.close()


# --- enqueue ---------------------------------------------------------------------------


def wrk(
    target: Target,
    body: dict[str, Any],
    connections: int,
    seconds: int,
    until: Callable[[], bool] | None = None,
) -> dict:
    """``wrk`` for ``seconds``, or until ``until()`` (polled twice a second) is true:
    then it is interrupted and prints its summary (requests in flight are dropped)."""
    wrk_process = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(WRK_SCRIPT), f"{target.url}{target.path}"],
        env={**os.environ, "WRK_BODY": json.dumps(body), "WRK_AUTH": target.key},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    if until is not None:
        while wrk_process.poll() is None and not until():
            time.sleep(0.5)
        wrk_process.send_signal(signal.SIGINT)
    out, _ = wrk_process.communicate(timeout=seconds + 60)
    if wrk_process.returncode != 0:
        raise RuntimeError(f"wrk exited with {wrk_process.returncode}:\n{out}")
    match = re.search(r"^WRK_JSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result = json.loads(match.group(1))
    result["req_per_s"] = result["requests"] / result["seconds"]
    return result


def enqueue(args: argparse.Namespace, origin: Origin, workdir: Path) -> dict[str, Any]:
    body = {"url": f"{origin.url}/ok"}
    (workdir / "sous-enqueue").mkdir()
    with make_stack(workdir / "sous-enqueue") as stack, baseline_stack(workdir) as base:
        api = stack.start_api()
        targets = [
            Target("sous", api.url, "/v1/fetches", stack.create_key("bench")),
            Target("baseline", base.start_api(), "/fetch"),
        ]
        for target in targets:  # warm both up (connection pools, imports, first queries)
            wrk(target, body, args.connections, 2)
        runs: dict[str, list[dict]] = {"sous": [], "baseline": []}
        for _ in range(args.runs):
            for target in targets:
                result = wrk(target, body, args.connections, args.seconds)
                accepted = result["statuses"].get("202", 0)
                if accepted != result["requests"]:
                    raise RuntimeError(f"{target.name}: not every request was accepted: {result}")
                runs[target.name].append(result)
    summary = {name: _summarise(results) for name, results in runs.items()}
    summary["ratio_req_per_s"] = round(
        summary["sous"]["req_per_s"] / summary["baseline"]["req_per_s"], 3
    )
    summary["ratio_p99"] = round(summary["sous"]["p99_ms"] / summary["baseline"]["p99_ms"], 3)
    summary.update(connections=args.connections, seconds=args.seconds, runs=args.runs)
    return summary


def _summarise(results: list[dict]) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 3)

    return {
        "req_per_s": median("req_per_s"),
        "p50_ms": median("p50_ms"),
        "p95_ms": median("p95_ms"),
        "p99_ms": median("p99_ms"),
        "runs_req_per_s": [round(r["req_per_s"], 1) for r in results],
    }


# --- end to end ------------------------------------------------------------------------


def drain(target: Target, bodies: list[dict], connections: int, finished: Callable[[], int]):
    """Submit every body (``submitter.post_all``), then wait until every job has finished."""
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sent = runner.run(post_all(target.url, target.path, bodies, connections, headers))
    if sent.statuses[202] != len(bodies):
        raise RuntimeError(f"{target.name}: not every job was accepted: {sent}")
    wait_until(lambda: finished() >= len(bodies), 600, f"{target.name}: every job", 0.1)
    return sent.seconds, time.perf_counter() - started, sent.retried


def sous_finished(stack: Stack) -> Callable[[], int]:
    url = stack.libpq_url()

    def count() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')"
            ).fetchone()
        return int(row[0]) if row else 0

    return count


def end_to_end(args: argparse.Namespace, origin: Origin, workdir: Path) -> dict[str, Any]:
    bodies = [{"url": f"{origin.url}/ok?n={i}"} for i in range(args.jobs)]
    results: dict[str, Any] = {}
    (workdir / "sous-e2e").mkdir()
    with make_stack(workdir / "sous-e2e") as stack:
        for n in range(2):
            stack.start_fast_worker(f"fast-{n}", concurrency=100)
        api = stack.start_api()
        target = Target("sous", api.url, "/v1/fetches", stack.create_key("bench"))
        submitted, total, retried = drain(target, bodies, args.connections, sous_finished(stack))
        with psycopg.connect(stack.libpq_url()) as conn:
            states = dict(
                conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
            )
        results["sous"] = _e2e(args.jobs, submitted, total, states, retried)
    with baseline_stack(workdir) as base:
        base.start_worker()
        target = Target("baseline", base.start_api(), "/fetch")
        submitted, total, retried = drain(target, bodies, args.connections, base.finished)
        results["baseline"] = _e2e(args.jobs, submitted, total, base.states(), retried)
    results["ratio_jobs_per_s"] = round(
        results["sous"]["jobs_per_s"] / results["baseline"]["jobs_per_s"], 3
    )
    results.update(jobs=args.jobs, connections=args.connections)
    return results


def _e2e(
    jobs: int, submitted: float, total: float, states: dict[str, int], retried: int
) -> dict[str, Any]:
    return {
        "retried_requests": retried,
        "submit_s": round(submitted, 2),
        "total_s": round(total, 2),
        "jobs_per_s": round(jobs / total, 1),
        "states": states,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per enqueue run")
    parser.add_argument("--runs", type=int, default=3, help="enqueue runs per side")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the end-to-end run")
    parser.add_argument("--skip", choices=["enqueue", "e2e"], action="append", default=[])
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--no-save", action="store_true", help="print only; leave bench/results.json alone"
    )
    args = parser.parse_args(argv)
    origin = Origin()
    results: dict[str, Any] = {"machine": machine(), "date": now()}
    try:
        with contextlib.ExitStack() as cleanup:
            tmp = tempfile.mkdtemp(prefix="sous-bench-")
            if not args.keep:
                cleanup.callback(shutil.rmtree, tmp, True)
            print(f"logs in {tmp}", file=sys.stderr)
            if "enqueue" not in args.skip:
                results["enqueue"] = enqueue(args, origin, Path(tmp))
            if "e2e" not in args.skip:
                results["end_to_end"] = end_to_end(args, origin, Path(tmp))
    finally:
        origin.close()
    report("vs_baseline", results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
