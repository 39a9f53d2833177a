"""Capacity model of an autoscaled worker pool: queue depth, replicas and job waits over time.

A discrete-time simulation (one-second steps) of what the Helm chart deploys: jobs arrive
(a quiet rate, then a burst), wait in the queue, and run on pods of ``concurrency``
processes; KEDA looks at ready + unacked messages every ``pollingInterval`` seconds and
asks for ``ceil(messages / queueLength)`` pods between min and max; the HPA it drives adds
pods at most as fast as Kubernetes' default scale-up policy (double, or +4, per 15 s),
removes them only after the chart's 300 s stabilization window and one pod per minute; a
new pod takes ``--pod-start`` seconds to consume; a pod scaled down finishes what it runs
(warm shutdown) and takes nothing new. Service times come from the measured transcode
speed in ``bench/results.json`` (seconds of video per second per process).

It compares candidate ``queueLength`` / ``pollingInterval`` settings on the same arrivals
(same seed), prints the p50/p95/max wait and the pod-hours each costs, and draws
``bench/capacity-heavy.png`` for the chart's defaults. ``charts/sous/README.md`` cites it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
VALUES = BENCH.parent / "charts" / "sous" / "values.yaml"
RESULTS = BENCH / "results.json"
#: The chart's HPA behaviour (templates/worker-autoscaling.yaml).
STABILIZATION_SECONDS = 300
SCALE_DOWN_PODS_PER_MINUTE = 1
#: Kubernetes' default HPA scale-up policy: the larger of +100 % and +4 pods per 15 s.
SCALE_UP_PERIOD = 15


@dataclass
class Pod:
    ready_at: float
    slots: int
    running: list[float] = field(default_factory=list)  # finish times
    draining: bool = False


@dataclass
class Settings:
    queue_length: int
    polling_interval: int
    min_replicas: int
    max_replicas: int
    concurrency: int
    pod_start: float

    def label(self) -> str:
        return f"queueLength={self.queue_length}, pollingInterval={self.polling_interval}s"


@dataclass
class Workload:
    quiet_rate: float  # jobs per second
    burst_rate: float
    burst_start: int
    burst_seconds: int
    horizon: int
    mean_clip_seconds: float
    speed: float  # seconds of video per second per process

    def arrivals(self, seed: int) -> list[tuple[float, float]]:
        """(arrival time, service seconds) of every job, Poisson arrivals."""
        rng = random.Random(seed)
        jobs, t = [], 0.0
        while True:
            in_burst = self.burst_start <= t < self.burst_start + self.burst_seconds
            t += rng.expovariate(self.burst_rate if in_burst else self.quiet_rate)
            if t >= self.horizon:
                return jobs
            clip = rng.expovariate(1 / self.mean_clip_seconds)
            jobs.append((t, max(1.0, clip / self.speed)))


@dataclass
class Outcome:
    settings: Settings
    waits: list[float]
    pod_seconds: float
    series: dict[str, list[float]]
    unfinished: int

    def summary(self) -> dict[str, float | str | int]:
        waits = sorted(self.waits)
        return {
            "settings": self.settings.label(),
            "jobs": len(waits),
            "wait_p50_s": round(statistics.median(waits), 1),
            "wait_p95_s": round(waits[int(0.95 * (len(waits) - 1))], 1),
            "wait_max_s": round(waits[-1], 1),
            "pod_hours": round(self.pod_seconds / 3600, 2),
            "unfinished": self.unfinished,
        }


def simulate(settings: Settings, jobs: list[tuple[float, float]], horizon: int) -> Outcome:
    pending = deque(jobs)
    queue: deque[tuple[float, float]] = deque()
    pods = [Pod(0.0, settings.concurrency) for _ in range(settings.min_replicas)]
    desired_history: deque[tuple[int, int]] = deque()
    last_scale_up = last_scale_down = -math.inf
    waits: list[float] = []
    pod_seconds = 0.0
    series: dict[str, list[float]] = {"queued": [], "in_flight": [], "pods": [], "desired": []}
    desired = settings.min_replicas
    end = horizon * 3  # let the backlog drain after the last arrival
    for now in range(end):
        while pending and pending[0][0] <= now:
            queue.append(pending.popleft())
        for pod in pods:
            pod.running = [finish for finish in pod.running if finish > now]
        pods = [pod for pod in pods if not (pod.draining and not pod.running)]
        for pod in pods:
            if pod.draining or pod.ready_at > now:
                continue
            while queue and len(pod.running) < pod.slots:
                arrived, service = queue.popleft()
                waits.append(now - arrived)
                pod.running.append(now + service)
        in_flight = sum(len(pod.running) for pod in pods)
        live = [pod for pod in pods if not pod.draining]
        if now % settings.polling_interval == 0:
            messages = len(queue) + in_flight
            desired = max(
                settings.min_replicas,
                min(settings.max_replicas, math.ceil(messages / settings.queue_length)),
            )
        desired_history.append((now, desired))
        while desired_history and desired_history[0][0] < now - STABILIZATION_SECONDS:
            desired_history.popleft()
        if desired > len(live) and now - last_scale_up >= SCALE_UP_PERIOD:
            step = max(len(live), 4)
            for _ in range(min(desired, len(live) + step) - len(live)):
                pods.append(Pod(now + settings.pod_start, settings.concurrency))
            last_scale_up = now
        else:
            recommendation = max(d for _, d in desired_history)
            if recommendation < len(live) and now - last_scale_down >= 60:
                victims = sorted(live, key=lambda pod: len(pod.running))
                for pod in victims[:SCALE_DOWN_PODS_PER_MINUTE]:
                    pod.draining = True
                last_scale_down = now
        pod_seconds += len(pods)
        series["queued"].append(len(queue))
        series["in_flight"].append(in_flight)
        series["pods"].append(sum(1 for pod in pods if pod.ready_at <= now and not pod.draining))
        series["desired"].append(desired)
        if now >= horizon and not queue and not pending and not in_flight:
            break
    return Outcome(settings, waits, pod_seconds, series, len(queue) + len(pending))


def plot(outcome: Outcome, jobs: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    seconds = range(len(outcome.series["queued"]))
    top.plot(seconds, outcome.series["queued"], label="ready messages (queued)")
    top.plot(seconds, outcome.series["in_flight"], label="unacked (running)")
    top.set_ylabel("messages")
    top.legend(loc="upper right")
    middle.step(seconds, outcome.series["desired"], where="post", label="KEDA desired")
    middle.step(seconds, outcome.series["pods"], where="post", label="pods consuming")
    middle.set_ylabel("replicas")
    middle.legend(loc="upper right")
    arrivals = [arrived for arrived, _ in jobs][: len(outcome.waits)]
    bottom.scatter(arrivals, outcome.waits, s=4)
    bottom.set_ylabel("queue wait (s)")
    bottom.set_xlabel("seconds")
    figure.suptitle(f"Heavy pool, {outcome.settings.label()}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def chart_defaults() -> dict:
    values = yaml.safe_load(VALUES.read_text())["workerHeavy"]
    return {
        "queue_length": values["autoscaling"]["queueLength"],
        "polling_interval": values["autoscaling"]["pollingInterval"],
        "min_replicas": values["autoscaling"]["minReplicas"],
        "max_replicas": values["autoscaling"]["maxReplicas"],
        "concurrency": values["concurrency"],
    }


def measured_speed() -> float:
    """Seconds of video per second per process, from the last transcode benchmark."""
    results = json.loads(RESULTS.read_text())["transcodes"]["throughput_clip_seconds_per_s"]
    pool = max(results, key=int)
    return float(results[pool]) / int(pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-rate", type=float, default=1 / 60, help="jobs/s outside the burst")
    parser.add_argument("--burst-rate", type=float, default=0.25, help="jobs/s during the burst")
    parser.add_argument("--burst-start", type=int, default=900, help="second the burst starts")
    parser.add_argument("--burst-seconds", type=int, default=900, help="length of the burst")
    parser.add_argument("--horizon", type=int, default=3600, help="seconds of arrivals")
    parser.add_argument("--clip-seconds", type=float, default=60, help="mean video length")
    parser.add_argument("--speed", type=float, help="x realtime per process (default: measured)")
    parser.add_argument("--pod-start", type=float, default=45, help="seconds until a pod consumes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=BENCH / "capacity-heavy.png")
    args = parser.parse_args(argv)
    speed = args.speed or measured_speed()
    workload = Workload(
        args.quiet_rate,
        args.burst_rate,
        args.burst_start,
        args.burst_seconds,
        args.horizon,
        args.clip_seconds,
        speed,
    )
    jobs = workload.arrivals(args.seed)
    defaults = chart_defaults()
    candidates = [
        Settings(**{**defaults, "queue_length": q, "polling_interval": p}, pod_start=args.pod_start)
        for q in (1, 2, 4)
        for p in (15, 30)
    ]
    outcomes = [simulate(settings, jobs, args.horizon) for settings in candidates]
    print(
        f"{len(jobs)} jobs, mean clip {args.clip_seconds:.0f} s at {speed:.2f}x realtime per "
        f"process; burst {args.burst_rate}/s for {args.burst_seconds} s; pods of "
        f"{defaults['concurrency']} processes, {defaults['min_replicas']}-"
        f"{defaults['max_replicas']} replicas, {args.pod_start:.0f} s to start"
    )
    for outcome in outcomes:
        print(json.dumps(outcome.summary()))
    chosen = next(
        o
        for o in outcomes
        if o.settings.queue_length == defaults["queue_length"]
        and o.settings.polling_interval == defaults["polling_interval"]
    )
    plot(chosen, jobs, args.plot)
    print(f"plot of the chart's defaults ({chosen.settings.label()}): {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
