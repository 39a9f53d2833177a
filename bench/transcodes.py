"""Benchmarks of the heavy pool: framework overhead and throughput of transcode jobs.

Starts its own Sous installation (private database, vhost and Redis DB), the API and a
prefork heavy worker, on 127.0.0.1. Results are printed and merged into
``bench/results.json``.

* overhead: a 60 s 720p clip to ``mp4-h264-720p`` through Sous vs the very ffmpeg command
  the worker runs, run directly with the same thread count (a pool of one), alternating,
  median of ``--runs``. Sous is timed two ways: the job (its ``created_at`` →
  ``finished_at``) and end to end on the client's clock (upload included).
* throughput: clip-seconds transcoded per wall-second, with the pool at 1 and at 2
  processes, for a burst of jobs submitted at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO / "bench")]

from results import machine, now, report  # noqa: E402

from sous_core.transcode_params import PRESETS  # noqa: E402
from sous_worker_heavy.media.commands import transcode_command  # noqa: E402
from support.stack import make_stack, wait_until  # noqa: E402

_T = TypeVar("_T")
PRESET = "mp4-h264-720p"


def make_clip(path: Path, seconds: float) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine",
         "-t", str(seconds), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
         "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


def direct_seconds(clip: Path, work: Path, threads: int) -> float:
    """The worker's own ffmpeg command, run by hand: the baseline."""
    command = transcode_command(
        clip, PRESETS[PRESET], work / "direct.mp4", start=None, duration=None, threads=threads
    )
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def submit(client: httpx.Client, clip: Path) -> str:
    with clip.open("rb") as handle:
        response = client.post(
            "/v1/transcodes",
            files={"file": (clip.name, handle, "video/mp4")},
            data={"options": json.dumps({"preset": PRESET})},
        )
    response.raise_for_status()
    return str(response.json()["id"])


def wait_all(client: httpx.Client, job_ids: list[str]) -> None:
    def done() -> bool:
        states = [client.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in job_ids]
        if {"failed", "cancelled"} & set(states):
            raise RuntimeError(f"a benchmark transcode did not succeed: {states}")
        return all(state == "succeeded" for state in states)

    wait_until(done, 3600, "the transcodes", interval=0.2)


def sous_seconds(client: httpx.Client, clip: Path) -> tuple[float, float]:
    """(job created → finished, client upload start → finished seen)."""
    started = time.perf_counter()
    job_id = submit(client, clip)
    wait_all(client, [job_id])
    end_to_end = time.perf_counter() - started
    job = client.get(f"/v1/jobs/{job_id}").json()
    created, finished = (datetime.fromisoformat(job[k]) for k in ("created_at", "finished_at"))
    return (finished - created).total_seconds(), end_to_end


def throughput(client: httpx.Client, clip: Path, seconds: float, jobs: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        job_ids = list(pool.map(lambda _: submit(client, clip), range(jobs)))
    wait_all(client, job_ids)
    return jobs * seconds / (time.perf_counter() - started)


def with_pool(tmp: Path, processes: int, action: Callable[[httpx.Client], _T]) -> _T:
    workdir = tmp / f"pool{processes}"
    workdir.mkdir(exist_ok=True)
    with make_stack(workdir, SOUS_MAX_UPLOAD_BYTES=str(4 * 1024**3)) as stack:
        stack.start_heavy_worker(concurrency=processes)
        api = stack.start_api()
        with api.client(stack.create_key("bench")) as client:
            client.timeout = httpx.Timeout(300)
            return action(client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="overhead clip length")
    parser.add_argument("--burst-seconds", type=float, default=10, help="throughput clip length")
    parser.add_argument("--burst", type=int, default=4, help="jobs per throughput burst")
    parser.add_argument("--runs", type=int, default=3, help="overhead repetitions (median)")
    parser.add_argument("--no-save", action="store_true", help="leave bench/results.json alone")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        clip = make_clip(tmp / "clip.mp4", args.seconds)
        short = make_clip(tmp / "short.mp4", args.burst_seconds)

        def alternate(client: httpx.Client) -> list[tuple[float, float, float]]:
            runs = []
            for _ in range(args.runs):
                direct = direct_seconds(clip, tmp, threads=cores)
                runs.append((direct, *sous_seconds(client, clip)))
            return runs

        runs = with_pool(tmp, 1, alternate)
        rates = {
            processes: with_pool(
                tmp,
                processes,
                lambda client: throughput(client, short, args.burst_seconds, args.burst),
            )
            for processes in (1, 2)
        }
    direct = statistics.median(run[0] for run in runs)
    job = statistics.median(run[1] for run in runs)
    end_to_end = statistics.median(run[2] for run in runs)
    results = {
        "overhead": {
            "clip_seconds": args.seconds,
            "preset": PRESET,
            "runs": [[round(x, 2) for x in run] for run in runs],
            "direct_ffmpeg_s": round(direct, 2),
            "sous_job_s": round(job, 2),
            "sous_end_to_end_s": round(end_to_end, 2),
            "job_ratio": round(job / direct, 3),
            "end_to_end_ratio": round(end_to_end / direct, 3),
        },
        "throughput_clip_seconds_per_s": {str(k): round(v, 2) for k, v in rates.items()},
        "burst": {"jobs": args.burst, "clip_seconds": args.burst_seconds},
        "machine": machine(),
        "date": now(),
    }
    report("transcodes", results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
