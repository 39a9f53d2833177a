"""Listing jobs at scale: ``GET /v1/jobs`` latency with a million job rows.

Fills a private Sous database with ``--rows`` jobs for one tenant (plus a tenth as many
for a second tenant, so the index holds other tenants' rows too) with a mix of kinds and
states like a busy installation's (mostly succeeded; few failed, cancelled, queued; batch
children), then times ``GET /v1/jobs`` through the real API: unfiltered, filtered by a
common and a rare state, by a rare kind, a filter that matches nothing, and 20 pages deep
with the cursor. Each scenario: ``--requests`` sequential requests, p50/p99 on the
client's clock (the API, PostgreSQL and this client share the machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO / "bench")]

from results import machine, now, report  # noqa: E402

from support.stack import make_stack  # noqa: E402

FILL = """
INSERT INTO jobs (id, tenant_id, kind, params, state, progress, attempts, cancel_requested,
                  created_at, updated_at, finished_at, children_finished, reaped, parent_id)
SELECT gen_random_uuid(), %(tenant)s,
       CASE WHEN n %% 100 = 0 THEN 'email' WHEN n %% 10 = 0 THEN 'transcode' ELSE 'fetch' END,
       '{"url": "http://example.com/"}'::jsonb,
       CASE WHEN n %% 1000 = 1 THEN 'queued' WHEN n %% 50 = 2 THEN 'cancelled'
            WHEN n %% 25 = 3 THEN 'failed' ELSE 'succeeded' END,
       100, 1, false,
       now() - make_interval(secs => (%(rows)s - n) * 0.5),
       now() - make_interval(secs => (%(rows)s - n) * 0.5),
       now() - make_interval(secs => (%(rows)s - n) * 0.5 - 1),
       0, 0,
       CASE WHEN n %% 4 = 0 THEN %(parent)s::uuid ELSE NULL END
FROM generate_series(1, %(rows)s) AS n
"""


def fill(database_url: str, tenant: str, rows: int) -> None:
    """``rows`` jobs; every fourth one a child of one batch (children are not listed)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO jobs (id, tenant_id, kind, params, state, progress, attempts,"
            " cancel_requested, created_at, updated_at, children_finished, reaped)"
            " VALUES (gen_random_uuid(), %s, 'fetch_batch', '{}'::jsonb, 'running', 0, 1,"
            " false, now() - interval '1 year', now(), 0, 0) RETURNING id",
            (tenant,),
        ).fetchone()
        assert row is not None
        conn.execute(FILL, {"tenant": tenant, "rows": rows, "parent": str(row[0])})


def tenant_id(database_url: str, name: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id FROM tenants WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def timed(client: httpx.Client, requests: int, params: dict[str, Any]) -> dict[str, float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get("/v1/jobs", params=params)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
    }


def deep_pages(client: httpx.Client, pages: int) -> dict[str, float]:
    times = []
    cursor = None
    for _ in range(pages):
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        started = time.perf_counter()
        body = client.get("/v1/jobs", params=params).raise_for_status().json()
        times.append((time.perf_counter() - started) * 1000)
        cursor = body["next_cursor"]
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(times[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs of the main tenant")
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario")
    parser.add_argument(
        "--no-save", action="store_true", help="print only; leave bench/results.json alone"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, make_stack(Path(tmp)) as stack:
        key = stack.create_key("big")
        stack.create_key("neighbour")
        url = stack.libpq_url()
        big, neighbour = tenant_id(url, "big"), tenant_id(url, "neighbour")
        started = time.perf_counter()
        fill(url, big, args.rows)
        fill(url, neighbour, args.rows // 10)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE jobs")
        fill_seconds = time.perf_counter() - started
        api = stack.start_api()
        scenarios = {
            "newest 50": {"limit": 50},
            "state=succeeded": {"limit": 50, "state": "succeeded"},
            "state=failed": {"limit": 50, "state": "failed"},
            "state=queued (rare)": {"limit": 50, "state": "queued"},
            "kind=email (rare)": {"limit": 50, "kind": "email"},
            "state=running (none)": {"limit": 50, "state": "running"},
        }
        with api.client(key) as client:
            for params in scenarios.values():  # warm up the cache and the query plans
                timed(client, 5, params)
            results = {name: timed(client, args.requests, p) for name, p in scenarios.items()}
            results["20 pages deep"] = deep_pages(client, 20)
    report(
        "scale",
        {
            "rows": args.rows + args.rows // 10,
            "fill_s": round(fill_seconds, 1),
            "requests_per_scenario": args.requests,
            "list_jobs": results,
            "machine": machine(),
            "date": now(),
        },
        save=not args.no_save,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
