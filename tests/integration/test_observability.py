"""Metrics, traces and logs of real Sous processes, read the way operators read them.

Counters are scraped over HTTP after a known number of jobs; a real Prometheus server
scrapes the API, a worker and the scheduler; spans arrive at a local OTLP receiver from
the API, the gevent worker and the prefork worker's children.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sous_core.celery_app import create_celery_app
from sous_core.celery_metrics import install_publisher_metrics
from sous_core.settings import Settings
from sous_core.tasks import FETCH_TASK, HEAVY_PING_TASK, TRANSCODE_TASK
from support.otlp import OtlpReceiver, ReceivedSpan
from support.prometheus import PrometheusServer
from support.scrape import scrape
from support.stack import (
    OK_BODY,
    TERMINAL,
    Origin,
    Stack,
    free_port,
    make_stack,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.integration


def metrics_env(stack: Stack, port: int, **extra: str) -> dict[str, str]:
    return {**stack.env, "SOUS_METRICS_PORT": str(port), **extra}


def frozen_counts(log: str) -> list[int]:
    """How many start-up objects each process of a log froze (``sous_core.heap``)."""
    return [int(n) for n in re.findall(r"moved (\d+) start-up objects", log)]


def pool_children(pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(line) for line in out.split()]


def niceness(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def test_a_prefork_worker_counts_every_task_of_every_child_even_a_killed_one(
    tmp_path: Path,
) -> None:
    port = free_port()
    with make_stack(tmp_path) as stack:
        env = metrics_env(stack, port, SOUS_METRICS_MULTIPROC_DIR=str(tmp_path / "prom"))
        worker = stack.start_heavy_worker(concurrency=2, env=env)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        settings = Settings(
            broker_url=stack.env["SOUS_BROKER_URL"], result_backend=stack.env["SOUS_RESULT_BACKEND"]
        )
        app = create_celery_app("test-client", settings, publisher_confirms=True)
        # Publish like Sous's processes do: stamped with the publish time (queue wait).
        install_publisher_metrics()
        try:
            first = [app.send_task(HEAVY_PING_TASK) for _ in range(20)]
            first_pids = {result.get(timeout=30)["pid"] for result in first}
            # Kill the children that ran those tasks: their counts must stay in the totals.
            children = pool_children(worker.popen.pid)
            assert len(children) == 2, children
            # Transcodes yield the CPU to the API and the fast pool (SOUS_HEAVY_WORKER_NICE).
            assert {niceness(pid) for pid in [worker.popen.pid, *children]} == {19}
            for pid in first_pids:
                os.kill(pid, signal.SIGKILL)
            wait_until(
                lambda: len(set(pool_children(worker.popen.pid)) - first_pids) == 2,
                30,
                "the pool to replace its killed children",
            )
            second = [app.send_task(HEAVY_PING_TASK) for _ in range(10)]
            second_pids = {result.get(timeout=30)["pid"] for result in second}
        finally:
            app.close()
        assert not second_pids & first_pids, "new children ran the second round"
        # The main process and every child, the replacements too, froze their start-up
        # objects out of the garbage collector's way.
        frozen = frozen_counts(worker.log())
        assert len(frozen) >= 5, frozen
        assert min(frozen) > 10_000, frozen

        samples = scrape(f"{url}/metrics")
        ping = {"name": HEAVY_PING_TASK, "queue_name": "heavy"}
        for counter in ("received", "started", "succeeded"):
            assert samples.total(f"celery_task_{counter}_total", **ping) == 30, counter
        assert samples.total("celery_task_runtime_count", **ping) == 30
        assert samples.total("celery_task_queue_wait_time_count", **ping) == 30
        assert samples.total("celery_task_failed_total") == 0
        assert samples.total("celery_worker_tasks_active") == 0
        assert samples.total("celery_worker_up") == 1
        (hostname,) = samples.label_values("celery_worker_up", "hostname")
        assert hostname.startswith("worker-heavy-")


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[tuple[Stack, dict[str, str]]]:
    """API, fast worker and scheduler with their metrics ports; the reaper every second."""
    with make_stack(tmp_path, SOUS_REAPER_INTERVAL="1") as stack:
        ports = {"worker": free_port(), "scheduler": free_port()}
        api = stack.start_api()
        stack.start_fast_worker(env=metrics_env(stack, ports["worker"]))
        scheduler = stack.start(
            "scheduler", "celery", "-A", "sous_scheduler.beat", "beat",
            env=metrics_env(stack, ports["scheduler"]),
        )  # fmt: skip
        scheduler.wait_for_log(r"metrics on http", 30)
        yield (
            stack,
            {
                "api": api.url.removeprefix("http://"),
                "worker": f"127.0.0.1:{ports['worker']}",
                "scheduler": f"127.0.0.1:{ports['scheduler']}",
            },
        )


def test_counters_and_histograms_say_how_many_jobs_ran_and_prometheus_scrapes_them(
    observed: tuple[Stack, dict[str, str]], origin: Origin, tmp_path: Path
) -> None:
    stack, targets = observed
    for proc in stack.processes:
        if proc.label.startswith(("api-", "worker-fast")):
            assert len(frozen_counts(proc.log())) == 1, f"{proc.label} froze no start-up objects"
    succeeded, failed = 12, 3
    api_url = f"http://{targets['api']}"
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {stack.create_key('obs')}"}
    ) as client:
        urls = [f"{origin.url}/ok?n={i}" for i in range(succeeded)]
        urls += [f"{origin.url}/status/404?n={i}" for i in range(failed)]
        ids = []
        for url in urls:
            response = client.post("/v1/fetches", json={"url": url})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        states = [wait_for_job(client, job_id, TERMINAL)["state"] for job_id in ids]
    assert states.count("succeeded") == succeeded
    assert states.count("failed") == failed

    api = scrape(f"{api_url}/metrics")
    assert api.total("sous_jobs_submitted_total", kind="fetch") == len(urls)
    posted = {"route": "/v1/fetches", "method": "POST", "status": "202"}
    assert api.total("sous_api_requests_total", **posted) == len(urls)
    assert api.total("sous_api_request_duration_seconds_count", **posted) == len(urls)
    assert api.total("sous_api_requests_total", route="/v1/jobs/{job_id}", method="GET") >= len(
        urls
    )
    assert not any("/ok" in route for route in api.label_values("sous_api_requests_total", "route"))
    assert api.has("sous_api_keys_active")

    def finished() -> bool:
        worker = scrape(f"http://{targets['worker']}/metrics")
        return worker.total("sous_jobs_finished_total", kind="fetch") == len(urls)

    wait_until(finished, 10, "the worker to count every finished job")
    worker = scrape(f"http://{targets['worker']}/metrics")
    fetch = {"name": FETCH_TASK, "queue_name": "fast"}
    assert worker.total("celery_task_received_total", **fetch) == len(urls)
    assert worker.total("celery_task_started_total", **fetch) == len(urls)
    assert worker.total("celery_task_succeeded_total", **fetch) == succeeded
    assert worker.total("celery_task_failed_total", **fetch, exception="http_error") == failed
    assert worker.total("celery_task_runtime_count", **fetch) == len(urls)
    assert worker.total("celery_task_queue_wait_time_count", **fetch) == len(urls)
    assert worker.total("sous_jobs_finished_total", kind="fetch", state="succeeded") == succeeded
    assert worker.total("sous_jobs_finished_total", kind="fetch", state="failed") == failed
    assert worker.total("sous_fetches_total", outcome="2xx") == succeeded
    assert worker.total("sous_fetches_total", outcome="error") == failed
    assert worker.total("sous_fetch_bytes_total") == succeeded * len(OK_BODY)
    assert worker.total("celery_worker_up") == 1
    assert worker.total("celery_worker_tasks_active") == 0

    def scheduler_ticked() -> bool:
        samples = scrape(f"http://{targets['scheduler']}/metrics")
        return samples.total("sous_scheduler_ticks_fired_total", source="maintenance") >= 1

    wait_until(scheduler_ticked, 15, "the scheduler to fire the reaper")
    scheduler = scrape(f"http://{targets['scheduler']}/metrics")
    assert scheduler.total("sous_queue_stats_up") == 1
    assert scheduler.has("celery_queue_length", queue_name="fast")
    assert scheduler.has("sous_queue_unacked_messages", queue_name="heavy")
    assert scheduler.total("celery_active_consumer_count", queue_name="heavy") == 0

    def fast_consumer_seen() -> bool:
        # The management API refreshes its queue statistics every few seconds.
        samples = scrape(f"http://{targets['scheduler']}/metrics")
        return samples.total("celery_active_consumer_count", queue_name="fast") == 1

    wait_until(fast_consumer_seen, 20, "the fast worker to show as the fast queue's consumer")
    assert scheduler.total("sous_scheduler_last_fire_timestamp_seconds") > 0
    assert scheduler.total("sous_scheduler_last_loop_timestamp_seconds") > 0

    prometheus = PrometheusServer(tmp_path / "prometheus", targets)
    try:
        wait_until(
            lambda: set(prometheus.targets_up().values()) == {"up"},
            30,
            "Prometheus to scrape every target",
        )

        def answered() -> bool:
            result = prometheus.query('sum(sous_jobs_finished_total{kind="fetch"})')
            return bool(result) and float(result[0]["value"][1]) == len(urls)

        wait_until(answered, 30, "Prometheus to answer with the finished job count")
        (queue,) = prometheus.query('celery_active_consumer_count{queue_name="fast"}')
        assert float(queue["value"][1]) == 1
        assert queue["metric"]["job"] == "scheduler"
    finally:
        prometheus.close()


def make_clip(path: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=25", "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264",
         "-preset", "ultrafast", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


def one_trace(receiver: OtlpReceiver, job_id: str, run_span: str, outbound: str):
    """The spans of the trace whose worker span ran ``job_id``, once they all arrived."""

    def arrived() -> list[ReceivedSpan] | None:
        spans = receiver.received()
        runs = [
            s for s in spans if s.name == run_span and s.attributes.get("sous.job_id") == job_id
        ]
        if not runs:
            return None
        trace = [s for s in spans if s.trace_id == runs[0].trace_id]
        names = {s.name for s in trace}
        return trace if outbound in names and any(s.service == "sous-api" for s in trace) else None

    return wait_until(arrived, 30, f"the spans of job {job_id}", interval=0.2)


def test_one_trace_runs_from_the_http_request_to_the_workers_outbound_calls(
    tmp_path: Path, origin: Origin
) -> None:
    receiver = OtlpReceiver()
    tracing = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SOUS_LOG_FORMAT": "json",
    }
    try:
        with make_stack(tmp_path, **tracing) as stack:
            api = stack.start_api()
            fast = stack.start_fast_worker()
            stack.start_heavy_worker(concurrency=2)
            with api.client(stack.create_key("traced")) as client:
                client.timeout = httpx.Timeout(60)
                fetch = client.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).json()
                clip = make_clip(tmp_path / "clip.mp4")
                with clip.open("rb") as handle:
                    transcode = client.post(
                        "/v1/transcodes",
                        files={"file": ("clip.mp4", handle, "video/mp4")},
                        data={"options": json.dumps({"preset": "mp4-h264-480p"})},
                    ).json()
                assert wait_for_job(client, fetch["id"], TERMINAL)["state"] == "succeeded"
                assert wait_for_job(client, transcode["id"], TERMINAL, 120)["state"] == "succeeded"

            trace = one_trace(receiver, fetch["id"], f"run/{FETCH_TASK}", "GET")
            by_name = {span.name: span for span in trace}
            request = next(s for s in trace if s.service == "sous-api" and s.parent_span_id == "")
            assert request.name == "POST /v1/fetches"
            publish = by_name[f"apply_async/{FETCH_TASK}"]
            run = by_name[f"run/{FETCH_TASK}"]
            get = by_name["GET"]
            assert publish.service == "sous-api"
            assert run.service == "sous-worker-fast"
            assert run.parent_span_id == publish.span_id, "the context crossed the broker"
            assert get.parent_span_id == run.span_id
            assert get.attributes["sous.job_id"] == fetch["id"]
            assert get.attributes["http.response.status_code"] == 200

            # A prefork child started its own tracing (worker_process_init).
            video = one_trace(
                receiver, transcode["id"], f"run/{TRANSCODE_TASK}", "ffmpeg transcode"
            )
            services = {span.name: span.service for span in video}
            assert services[f"run/{TRANSCODE_TASK}"] == "sous-worker-heavy"
            assert services["ffmpeg transcode"] == "sous-worker-heavy"
            assert services["POST /v1/transcodes"] == "sous-api"

            # JSON log lines carry the job and the trace they belong to.
            lines = [json.loads(line) for line in fast.log().splitlines() if line.startswith("{")]
            assert lines, fast.log()
            assert all({"timestamp", "level", "service", "message"} <= set(line) for line in lines)
            job_lines = [line for line in lines if line.get("job_id") == fetch["id"]]
            assert job_lines, "log lines of the fetch carry its job id"
            assert {line["trace_id"] for line in job_lines} == {run.trace_id}
            assert {line["service"] for line in job_lines} == {"sous-worker-fast"}
    finally:
        receiver.close()
