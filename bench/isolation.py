"""Isolation: short jobs stay fast while long ones fill the machine, Sous and the baseline.

* email latency: E emails submitted at a steady rate, submit → accepted by the local SMTP
  sink, p50/p99; first with nothing else queued, then with a backlog of T transcodes
  queued and running (every core busy). Sous runs emails on its fast pool and
  transcodes on the heavy pool (separate queues, heavy workers at a lower CPU priority,
  ``SOUS_HEAVY_WORKER_NICE``); the baseline has one queue and one worker for both.
* the waiter: ``GET /v1/jobs/{id}`` (the baseline: ``GET /tasks/{id}``) p50/p99 while
  idle and while the transcodes saturate every core.

Both phases run the emails and the waiter's GETs side by side, so the only difference
between them is the transcode backlog. Sous's side runs ``--runs`` times (a fresh
installation each) and its ratios are the medians; a p99 of a few hundred samples moves
by tens of percent between runs. The baseline runs once: its emails wait seconds
behind the transcodes, a gap no run-to-run noise blurs.

Same machine, same run, same clip and encoder settings on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO / "bench")]

from results import machine, now, report  # noqa: E402
from vs_baseline import baseline_stack  # noqa: E402

from support.sinks import SmtpSink  # noqa: E402
from support.stack import make_stack, wait_until  # noqa: E402


def make_clip(path: Path, seconds: float) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds),
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
         str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
    }


def email_latencies(
    sink: SmtpSink, send: Callable[[str], None], count: int, rate: float, tag: str
) -> dict[str, float]:
    """Submit ``count`` emails at ``rate``/s; submit → delivered per email."""
    submitted: dict[str, float] = {}
    for i in range(count):
        subject = f"{tag}-{i}"
        submitted[subject] = time.time()
        send(subject)
        time.sleep(max(0.0, 1 / rate - (time.time() - submitted[subject])))

    def delivered() -> dict[str, float] | None:
        got = {m.message["Subject"]: m.received_at for m in list(sink.messages)}
        return got if all(s in got for s in submitted) else None

    got = wait_until(delivered, 600, f"the {tag} emails", interval=0.1)
    return percentiles([(got[s] - t) * 1000 for s, t in submitted.items()])


def waiter_latencies(get: Callable[[], None], count: int) -> dict[str, float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        get()
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
    return percentiles(times)


def under_load(emails: Callable[[], dict], waiter: Callable[[], dict]) -> dict[str, Any]:
    """Run the email and the waiter measurements side by side."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.__setitem__("waiter", waiter()))
    thread.start()
    out["email"] = emails()
    thread.join()
    return out


def sous_side(
    args: argparse.Namespace, clip: Path, sink: SmtpSink, tmp: Path, run: int = 0
) -> dict:
    workdir = tmp / f"sous-{run}"
    workdir.mkdir()
    with make_stack(workdir, SOUS_SMTP_PORT=str(sink.port)) as stack:
        stack.start_fast_worker()
        stack.start_heavy_worker(concurrency=args.pool)
        api = stack.start_api()
        with api.client(stack.create_key("isolation")) as client:
            client.timeout = httpx.Timeout(60)

            def send(subject: str) -> None:
                body = {"to": ["user@example.com"], "subject": subject, "text": "hello"}
                client.post("/v1/emails", json=body).raise_for_status()

            probe = client.post("/v1/emails", json={"to": ["a@example.com"], "subject": "probe",
                                                    "text": "x"}).json()["id"]  # fmt: skip

            def get() -> None:
                client.get(f"/v1/jobs/{probe}").raise_for_status()

            idle = under_load(
                lambda: email_latencies(sink, send, args.emails, args.rate, f"sous-idle-{run}"),
                lambda: waiter_latencies(get, args.gets),
            )
            backlog = []
            for _ in range(args.transcodes):
                with clip.open("rb") as handle:
                    response = client.post(
                        "/v1/transcodes",
                        files={"file": ("clip.mp4", handle, "video/mp4")},
                        data={"options": json.dumps({"preset": "mp4-h264-720p"})},
                    )
                backlog.append(response.raise_for_status().json()["id"])
            wait_until(
                lambda: client.get(f"/v1/jobs/{backlog[0]}").json()["state"] == "running",
                60,
                "the first transcode to run",
            )
            busy = under_load(
                lambda: email_latencies(sink, send, args.emails, args.rate, f"sous-busy-{run}"),
                lambda: waiter_latencies(get, args.gets),
            )
            still_queued = sum(
                client.get(f"/v1/jobs/{job}").json()["state"] in {"queued", "pending"}
                for job in backlog
            )
            for job in backlog:
                client.post(f"/v1/jobs/{job}/cancel")
    return {"idle": idle, "backlog": busy, "transcodes_still_queued_after": still_queued}


def baseline_side(args: argparse.Namespace, clip: Path, sink: SmtpSink, tmp: Path) -> dict:
    with baseline_stack(tmp) as base:
        base.env["BASELINE_SMTP_PORT"] = str(sink.port)
        base.start_worker()
        url = base.start_api()
        with httpx.Client(base_url=url, timeout=60) as client:

            def send(subject: str) -> None:
                body = {"to": ["user@example.com"], "subject": subject, "text": "hello"}
                client.post("/email", json=body).raise_for_status()

            probe = client.post(
                "/email", json={"to": ["a@example.com"], "subject": "probe", "text": "x"}
            ).json()["task_id"]

            def get() -> None:
                client.get(f"/tasks/{probe}").raise_for_status()

            idle = under_load(
                lambda: email_latencies(sink, send, args.emails, args.rate, "base-idle"),
                lambda: waiter_latencies(get, args.gets),
            )
            for n in range(args.transcodes):
                client.post(
                    "/transcode", json={"source": str(clip), "target": str(tmp / f"out-{n}.mp4")}
                ).raise_for_status()
            busy = under_load(
                lambda: email_latencies(sink, send, args.emails, args.rate, "base-busy"),
                lambda: waiter_latencies(get, args.gets),
            )
    return {"idle": idle, "backlog": busy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=60, help="emails per phase")
    parser.add_argument("--rate", type=float, default=10, help="emails submitted per second")
    parser.add_argument("--gets", type=int, default=200, help="GETs per waiter phase")
    parser.add_argument("--transcodes", type=int, default=50, help="transcodes in the backlog")
    parser.add_argument("--clip-seconds", type=float, default=4, help="length of the clip")
    parser.add_argument("--pool", type=int, default=2, help="heavy pool processes")
    parser.add_argument("--runs", type=int, default=3, help="runs of Sous's side")
    parser.add_argument(
        "--no-save", action="store_true", help="print only; leave bench/results.json alone"
    )
    args = parser.parse_args(argv)
    sink = SmtpSink()
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            clip = make_clip(tmp / "clip.mp4", args.clip_seconds)
            sous_runs = [sous_side(args, clip, sink, tmp, run) for run in range(args.runs)]
            baseline = baseline_side(args, clip, sink, tmp)
    finally:
        sink.close()

    def ratio(side: dict, what: str) -> float:
        return round(side["backlog"][what]["p99_ms"] / side["idle"][what]["p99_ms"], 2)

    def ratios(what: str) -> dict[str, Any]:
        runs = [ratio(run, what) for run in sous_runs]
        return {
            "sous": statistics.median(runs),
            "sous_runs": runs,
            "baseline": ratio(baseline, what),
        }

    results = {
        "sous_runs": sous_runs,
        "baseline": baseline,
        "email_p99_ratio": ratios("email"),
        "waiter_p99_ratio": ratios("waiter"),
        "emails": args.emails,
        "transcodes": args.transcodes,
        "clip_seconds": args.clip_seconds,
        "machine": machine(),
        "date": now(),
    }
    report("isolation", results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
