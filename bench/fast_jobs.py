"""Benchmarks of the fast pool: fan-out of slow URLs, and email throughput.

Starts its own Sous installation (private database, vhost and Redis DB, like the tests),
one gevent fast worker and the API, a local HTTP origin and a local SMTP sink, all on
127.0.0.1. Results are printed and merged into ``bench/results.json``.

* fan-out: N URLs that each take 1 s to answer, fetched one after another (the
  sequential baseline, same fetch code, same machine, same run; by default 20 of them are
  fetched and the time scaled to N, as each fetch takes the same 1 s plus a few
  milliseconds) vs one Sous batch job (submit → batch succeeded, from the job's
  ``created_at`` and ``finished_at``).
* email: M emails submitted over HTTP at C concurrent connections (enqueue rate), then
  submit → all delivered to the SMTP sink (emails/s through one gevent worker).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO / "bench")]

from results import machine, now, report  # noqa: E402

from sous_core.netguard import parse_networks  # noqa: E402
from sous_fetch.fetching import FetchLimits, fetch_url  # noqa: E402
from support.sinks import SmtpSink  # noqa: E402
from support.stack import Origin, make_stack, wait_until  # noqa: E402


def sequential_seconds(origin: Origin, count: int, delay: float) -> float:
    """The baseline: the same fetches, one after another, in this process."""
    limits = FetchLimits(timeout_seconds=delay + 5)
    allow = parse_networks("127.0.0.1/32")
    started = time.perf_counter()
    for i in range(count):
        fetch_url(f"{origin.url}/delay/{delay}?seq={i}", limits=limits, allow_networks=allow)
    return time.perf_counter() - started


def batch_seconds(
    client: httpx.Client, origin: Origin, count: int, delay: float, run: int
) -> float:
    """Submit → finished, from the batch job's own timestamps (created_at → finished_at).

    The client polls only every 0.1 s, so its polling does not compete for the CPU.
    """
    urls = [f"{origin.url}/delay/{delay}?run={run}&n={i}" for i in range(count)]
    job_id = client.post("/v1/fetches", json={"urls": urls}).raise_for_status().json()["id"]

    def done() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in {"succeeded", "failed", "cancelled"} else None

    job = wait_until(done, 120, "the batch to finish", interval=0.1)
    assert job["result"]["succeeded"] == count, job["result"]
    created = datetime.fromisoformat(job["created_at"])
    return (datetime.fromisoformat(job["finished_at"]) - created).total_seconds()


def email_run(client: httpx.Client, sink: SmtpSink, count: int, concurrency: int, run: int) -> dict:
    before = len(sink.messages)
    bodies = [
        {"to": [f"bench-{run}-{i}@example.com"], "subject": f"bench {i}", "text": "hello"}
        for i in range(count)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(lambda b: client.post("/v1/emails", json=b).status_code, bodies))
    submitted = time.perf_counter() - started
    assert statuses.count(202) == count, statuses
    wait_until(lambda: len(sink.messages) - before >= count, 300, "every email", interval=0.02)
    total = time.perf_counter() - started
    return {"enqueue_per_s": count / submitted, "emails_per_s": count / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=100, help="URLs in the fan-out batch")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds each URL takes")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--emails", type=int, default=1000, help="emails per email run")
    parser.add_argument("--concurrency", type=int, default=20, help="HTTP connections")
    parser.add_argument(
        "--sequential-urls",
        type=int,
        default=20,
        help="URLs fetched one after another for the sequential baseline, its time scaled "
        "to --urls (each takes --delay plus the same small overhead, so the time is linear "
        "in the count; 0 fetches all --urls)",
    )
    parser.add_argument(
        "--no-save", action="store_true", help="print only; leave bench/results.json alone"
    )
    args = parser.parse_args(argv)
    sequential_count = min(args.sequential_urls or args.urls, args.urls)

    origin, sink = Origin(), SmtpSink()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            make_stack(
                Path(tmp),
                SOUS_SMTP_PORT=str(sink.port),
                # All endpoints are one local server here: let the whole batch reach it at once.
                SOUS_FETCH_PER_HOST_CONCURRENCY=str(args.urls),
            ) as stack,
        ):
            stack.start_fast_worker(concurrency=max(100, args.urls + 10))
            api = stack.start_api()
            with api.client(stack.create_key("bench")) as client:
                client.post("/v1/fetches", json={"url": f"{origin.url}/ok"})  # warm up
                batch = [
                    batch_seconds(client, origin, args.urls, args.delay, run)
                    for run in range(args.runs)
                ]
                email = [
                    email_run(client, sink, args.emails, args.concurrency, run)
                    for run in range(args.runs)
                ]
            sequential = sequential_seconds(origin, sequential_count, args.delay)
            sequential *= args.urls / sequential_count
    finally:
        origin.close()
        sink.close()

    fanout = statistics.median(batch)
    results = {
        "fanout": {
            "urls": args.urls,
            "delay_s": args.delay,
            "runs_s": [round(x, 3) for x in batch],
            "sous_wall_s": round(fanout, 3),
            "sequential_s": round(sequential, 3),
            "sequential_measured_urls": sequential_count,
            "speedup": round(sequential / fanout, 1),
        },
        "email": {
            "emails": args.emails,
            "concurrency": args.concurrency,
            "enqueue_per_s": round(statistics.median(r["enqueue_per_s"] for r in email), 1),
            "emails_per_s": round(statistics.median(r["emails_per_s"] for r in email), 1),
        },
        "machine": machine(),
        "date": now(),
    }
    report("fast_jobs", results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
