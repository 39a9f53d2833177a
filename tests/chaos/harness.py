"""The fault suite: Sous under a mixed job stream while its processes and servers fail.

``run_chaos`` starts private RabbitMQ, Redis and PostgreSQL servers, the Sous processes
(API, two fast workers, a heavy worker, the scheduler), an SMTP sink and an HTTP origin;
submits emails, fetch batches and transcodes over HTTP while injecting faults; then waits
for every job to end and checks the invariants:

    report = run_chaos(ChaosConfig(seed=7, rounds=1), Path("/tmp/chaos"))
    print(report.table())
    assert report.ok
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from kombu import Connection

import process_commands
from chaos.private_services import PrivateServices
from support.sinks import SmtpSink
from support.stack import Api, Origin, Proc, Stack, wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}

#: Every fault the suite injects, in the order a short run applies them.
FAULTS = (
    "kill_pool_child",
    "kill_fast_worker",
    "kill_heavy_worker",
    "restart_rabbitmq",
    "restart_redis",
    "restart_postgres",
    "freeze_fast_worker",
    "rollout_heavy_worker",
)

#: Seconds without a heartbeat before the reaper re-queues a job, per kind (suite values).
#: Transcodes get longer than a heavy worker takes to restart (its redelivered job waits
#: for it without a heartbeat), as in production, where the default is 300 s.
REAPER_SILENCE = {"fetch": 6.0, "email": 6.0, "transcode": 30.0}
FAST_WORKERS = ("fast-a", "fast-b")


@dataclass
class ChaosConfig:
    #: Random choices (job mix, fault order, which process dies) follow from the seed.
    seed: int = 1
    #: Rounds of the fault list; each round applies every fault once, in a seeded order.
    rounds: int = 1
    #: Keep starting rounds until this many seconds of faults have passed (0: ``rounds``).
    duration: float = 0.0
    #: Job submissions per second while faults run.
    rate: float = 3.0
    #: Seconds of plain load before the first fault and between two faults.
    pause: float = 2.0
    #: Seconds without any job ending, after the faults stop, before the rest count as
    #: stuck (a backlog that drains may take longer).
    settle_timeout: float = 60.0
    faults: tuple[str, ...] = FAULTS


@dataclass
class Submission:
    kind: str
    status: int | None
    at: float
    job_id: str | None = None
    error: str = ""
    #: Transcodes: the clip's duration in seconds, to check the output against.
    seconds: float = 0.0
    #: Sent again with the same Idempotency-Key after a 503 or no answer.
    retried: bool = False
    #: Answered ``Idempotent-Replayed: true`` (the first attempt had made the job).
    replayed: bool = False


@dataclass
class Invariant:
    name: str
    value: Any
    expected: Any
    ok: bool
    detail: str = ""


@dataclass
class ChaosReport:
    seed: int
    counts: dict[str, Any]
    invariants: list[Invariant]
    faults: list[dict[str, Any]]
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(invariant.ok for invariant in self.invariants)

    def table(self) -> str:
        rows = [("invariant", "value", "expected", "")]
        rows += [
            (i.name, _short(i.value), _short(i.expected), "ok" if i.ok else "FAIL")
            for i in self.invariants
        ]
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        lines = [" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)) for row in rows]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        counts = ", ".join(f"{name} {_short(value)}" for name, value in self.counts.items())
        faults = ", ".join(
            f"{f['fault']} ({f['seconds']:.1f}s{'' if f['ok'] else ' ' + f['detail']})"
            for f in self.faults
        )
        details = [f"  {i.name}: {i.detail}" for i in self.invariants if i.detail and not i.ok]
        findings = [f"  - {finding}" for finding in self.findings]
        return "\n".join(
            [
                *lines,
                "",
                f"counts: {counts}",
                f"faults: {faults}",
                *(["failures:", *details] if details else []),
                *(["findings:", *findings] if findings else []),
            ]
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "ok": self.ok,
                "counts": self.counts,
                "invariants": [asdict(i) for i in self.invariants],
                "faults": self.faults,
                "findings": self.findings,
            },
            indent=2,
            default=str,
        )


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def make_clip(path: Path, seconds: float) -> Path:
    """A small test clip (testsrc + a tone), fast to transcode on two cores."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds),
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
         str(path)],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def probe_duration(path: Path) -> float | None:
    """The duration of a media file with a video stream, or None if ffprobe rejects it."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
         str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return None
    info = json.loads(result.stdout)
    if not any(s.get("codec_type") == "video" for s in info.get("streams", [])):
        return None
    return float(info["format"]["duration"])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class Load:
    """Threads that submit a seeded mix of jobs over HTTP and record every answer."""

    def __init__(
        self, api: Api, key: str, origin: Origin, clips: dict[float, Path], seed: int, rate: float
    ) -> None:
        self.api, self.key, self.origin, self.clips = api, key, origin, clips
        self.random = random.Random(seed)
        self.rate = rate
        self.submissions: list[Submission] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._count = 0

    def start(self, threads: int = 3) -> None:
        for n in range(threads):
            thread = threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        period = len(self._threads or [1]) / self.rate
        with self.api.client(self.key) as client:
            client.timeout = httpx.Timeout(15)
            while not self._stop.is_set():
                started = time.monotonic()
                self.submit_one(client)
                self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def _next(self) -> tuple[int, str, float]:
        with self._lock:
            self._count += 1
            roll = self.random.random()
            kind = "email" if roll < 0.55 else "fetch_batch" if roll < 0.88 else "transcode"
            return self._count, kind, self.random.choice(list(self.clips))

    def submit_one(self, client: httpx.Client) -> Submission:
        n, kind, seconds = self._next()
        submission = Submission(kind, None, time.monotonic())
        # Every third email carries an Idempotency-Key and, like a careful client, is sent
        # once more with it after a 503 or a lost answer: it must never make two jobs.
        key = f"chaos-{n}" if kind == "email" and n % 3 == 0 else None
        try:
            try:
                response = self._post(client, n, kind, seconds, key)
            except httpx.HTTPError:
                if key is None:
                    raise
                response = None
            if key is not None and (response is None or response.status_code == 503):
                submission.retried = True
                self._stop.wait(0.5)
                response = self._post(client, n, kind, seconds, key)
            submission.status = response.status_code
            submission.replayed = response.headers.get("Idempotent-Replayed") == "true"
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if response.status_code == 202:
                submission.job_id = body["id"]
                submission.seconds = seconds if kind == "transcode" else 0.0
            else:
                submission.error = str((body.get("error") or {}).get("code", response.text[:80]))
        except httpx.HTTPError as exc:
            submission.error = type(exc).__name__
        with self._lock:
            self.submissions.append(submission)
        return submission

    def _post(
        self, client: httpx.Client, n: int, kind: str, seconds: float, key: str | None = None
    ) -> httpx.Response:
        if kind == "email":
            # One in four waits on a slow SMTP server (3 s), so faults land mid-send.
            to = f"slow-{n}@example.com" if n % 4 == 0 else f"user-{n}@example.com"
            return client.post(
                "/v1/emails",
                json={"to": [to], "subject": f"chaos {n}", "text": "hello"},
                headers={"Idempotency-Key": key} if key else None,
            )
        if kind == "fetch_batch":
            base = self.origin.url
            urls = [f"{base}/ok?n={n}", f"{base}/delay/0.3?n={n}", f"{base}/drip/2?n={n}"]
            if n % 4 == 0:
                urls.append(f"{base}/status/404?n={n}")
            return client.post("/v1/fetches", json={"urls": urls})
        preset = "mp4-h264-480p" if n % 3 else "webm-vp9-720p"
        with self.clips[seconds].open("rb") as handle:
            return client.post(
                "/v1/transcodes",
                files={"file": (f"clip-{n}.mp4", handle, "video/mp4")},
                data={"options": json.dumps({"preset": preset})},
            )


class Chaos:
    """The running installation: private servers, Sous processes, sinks, load."""

    def __init__(self, config: ChaosConfig, folder: Path, services: PrivateServices) -> None:
        self.config = config
        self.folder = folder
        self.services = services
        self.random = random.Random(config.seed)
        self.smtp = SmtpSink()
        self.origin = Origin()
        # Workers killed mid-fetch leave broken pipes; they are the point, not news.
        self.origin.server.httpd.handle_error = lambda *_args: None  # type: ignore[method-assign]
        self.procs: dict[str, Proc] = {}
        self.fault_log: list[dict[str, Any]] = []
        self.findings: list[str] = []
        self.rollouts: list[dict[str, Any]] = []
        self.unexpected_exits: list[str] = []
        self.reconnect_failures: list[str] = []
        silence = ",".join(f"{kind}={seconds:g}" for kind, seconds in REAPER_SILENCE.items())
        env = {
            **os.environ,
            "SOUS_BROKER_URL": services.rabbitmq.url,
            "SOUS_RESULT_BACKEND": services.redis.url,
            "SOUS_DATABASE_URL": services.postgres.url,
            "SOUS_RABBITMQ_MANAGEMENT_URL": services.rabbitmq.management_url,
            "SOUS_SMTP_HOST": "127.0.0.1",
            "SOUS_SMTP_PORT": str(self.smtp.port),
            "SOUS_FETCH_ALLOW_NETWORKS": "127.0.0.1/32",
            "SOUS_MAX_RETRIES": "6",
            "SOUS_RETRY_BACKOFF": "1",
            "SOUS_RETRY_BACKOFF_MAX": "4",
            "SOUS_HEARTBEAT_INTERVAL": "0.5",
            "SOUS_REAPER_INTERVAL": "1",
            "SOUS_REAPER_SILENCE": silence,
            "SOUS_PENDING_REQUEUE_AFTER": "10",
            "SOUS_PENDING_SWEEP_INTERVAL": "2",
            "SOUS_STORAGE_DIR": str(folder / "storage"),
            "SOUS_LOG_LEVEL": "INFO",
            "SOUS_LOG_FORMAT": "text",
            "SOUS_METRICS_PORT": "0",
        }
        for name in ("SOUS_RATE_LIMIT_PER_SECOND", "SOUS_CORS_ORIGINS"):
            env.pop(name, None)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.stack = Stack(name="chaos", env=env, workdir=folder / "logs")
        self.api: Api | None = None
        self.load: Load | None = None
        self._restarts: collections.Counter[str] = collections.Counter()

    # -- processes ---------------------------------------------------------------------

    def start_role(self, role: str, wait: bool = True) -> Proc:
        self._restarts[role] += 1
        label = f"{role}-{self._restarts[role]}"
        if role.startswith("fast"):
            argv = process_commands.worker_fast(20, f"{label}@%h")
        elif role == "heavy":
            argv = process_commands.worker_heavy(2, f"{label}@%h")
        else:
            argv = process_commands.scheduler()
        extra = ["--without-mingle", "--without-gossip"] if role != "scheduler" else []
        proc = self.stack.start(label, *argv, *extra)
        self.procs[role] = proc
        if wait:
            self.wait_ready(role)
        return proc

    def wait_ready(self, role: str, timeout: float = 90) -> None:
        if role != "scheduler":
            self.procs[role].wait_for_log(r"ready\.", timeout)

    def boot(self) -> None:
        self.stack.run("sous", "db", "upgrade")
        self.api = self.stack.start_api()
        for role in (*FAST_WORKERS, "heavy", "scheduler"):
            self.start_role(role, wait=False)
        for role in (*FAST_WORKERS, "heavy"):
            self.wait_ready(role)
        self.wait_consumers("boot")

    def supervise(self) -> None:
        """Restart any process that died on its own (Kubernetes would), and note it."""
        for role, proc in list(self.procs.items()):
            if proc.popen.poll() is not None:
                self.unexpected_exits.append(f"{proc.label} exited ({proc.popen.returncode})")
                self.start_role(role)
        assert self.api is not None
        if self.api.proc.popen.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.api.proc.log()[-3000:]}")

    def queue_counts(self, name: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue, exact (the management API lags ~5 s)."""
        with Connection(self.services.rabbitmq.url, connect_timeout=3) as connection:
            channel = connection.channel()
            try:
                declared = channel.queue_declare(queue=name, passive=True)
                return declared.message_count, declared.consumer_count
            finally:
                channel.close()

    def wait_consumers(self, after: str, timeout: float = 60) -> bool:
        """True once every worker consumes its queue again."""
        want = {"fast": len(FAST_WORKERS), "heavy": 1}

        def consuming() -> bool:
            try:
                return all(self.queue_counts(q)[1] >= n for q, n in want.items())
            except Exception:  # the broker is still starting: not yet
                return False

        try:
            wait_until(consuming, timeout, f"workers to consume after {after}", interval=1)
            return True
        except AssertionError:
            self.reconnect_failures.append(after)
            return False

    # -- the database ------------------------------------------------------------------

    def db(self) -> psycopg.Connection:
        url = self.services.postgres.url.replace("postgresql+psycopg", "postgresql")
        return psycopg.connect(url, connect_timeout=5)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return conn.execute(sql, args).fetchall()

    def running(self, kind: str) -> list[tuple[str, int]]:
        """Jobs of ``kind`` running on a live worker (a fresh heartbeat), with attempts."""
        rows = self.query(
            "SELECT id, attempts FROM jobs WHERE kind = %s AND state = 'running' "
            "AND heartbeat_at > now() - interval '2 seconds'",
            kind,
        )
        return [(str(job_id), attempts) for job_id, attempts in rows]

    def wait_running(self, kind: str, timeout: float = 30) -> list[tuple[str, int]]:
        try:
            return wait_until(lambda: self.running(kind), timeout, f"a running {kind}", 0.2)
        except AssertionError:
            return []

    # -- faults ------------------------------------------------------------------------

    def kill_pool_child(self) -> str:
        self.wait_running("transcode")
        children = children_of(self.procs["heavy"].popen.pid)
        if not children:
            return "no pool child found"
        victim = self.random.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return f"SIGKILL pool child {victim} of {self.procs['heavy'].label}"

    def kill_fast_worker(self) -> str:
        role = self.random.choice(FAST_WORKERS)
        self.wait_running("fetch", timeout=10)
        victim = self.procs[role]
        victim.kill()
        self.start_role(role)
        return f"SIGKILL {victim.label}, restarted"

    def kill_heavy_worker(self) -> str:
        self.wait_running("transcode")
        victim = self.procs["heavy"]
        victim.kill()
        self.start_role("heavy")
        return f"SIGKILL {victim.label} and its pool, restarted"

    def restart_rabbitmq(self) -> str:
        self.services.rabbitmq.restart(down_seconds=2)
        return "rabbitmqctl stop, 2 s down, started"

    def restart_redis(self) -> str:
        self.services.redis.restart(down_seconds=2)
        return "SIGTERM, 2 s down, started"

    def restart_postgres(self) -> str:
        self.services.postgres.restart(down_seconds=2)
        return "pg_ctl stop -m fast, 2 s down, started"

    def freeze_fast_worker(self) -> str:
        role = self.random.choice(FAST_WORKERS)
        victim = self.procs[role]
        self.wait_running("fetch", timeout=10)
        requeued_before = self._requeued_by_reaper()
        os.killpg(victim.popen.pid, signal.SIGSTOP)
        try:
            # Past the heartbeat silence, then until the reaper re-queued (bounded).
            time.sleep(max(REAPER_SILENCE["fetch"], REAPER_SILENCE["email"]) + 2)
            with contextlib.suppress(AssertionError):
                wait_until(
                    lambda: self._requeued_by_reaper() > requeued_before, 8, "a re-queue", 0.5
                )
        finally:
            os.killpg(victim.popen.pid, signal.SIGCONT)
        requeued = self._requeued_by_reaper() - requeued_before
        return f"SIGSTOP {victim.label} past its heartbeat, SIGCONT; reaper re-queued {requeued}"

    def _requeued_by_reaper(self) -> int:
        return self.query("SELECT count(*) FROM jobs WHERE reaped > 0")[0][0]

    def rollout_heavy_worker(self) -> str:
        running = dict(self.wait_running("transcode"))
        victim = self.procs["heavy"]
        sent_at = time.monotonic()
        victim.popen.send_signal(signal.SIGTERM)  # the main process, as the kubelet does
        try:
            victim.popen.wait(120)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
            victim.kill()
        self.rollouts.append(
            {
                "label": victim.label,
                "running": running,
                "exited": exited,
                "exit_seconds": time.monotonic() - sent_at,
                "received_after_sigterm": self._received_after_warm_shutdown(victim),
            }
        )
        self.start_role("heavy")
        return f"SIGTERM {victim.label} with {len(running)} transcode(s) running, restarted"

    @staticmethod
    def _received_after_warm_shutdown(proc: Proc) -> int:
        """Tasks the worker ran although they reached it after its warm shutdown began.

        A message already delivered to the consumer may still be logged as received
        after the shutdown began; it is not run but handed back (unacknowledged) when
        the worker closes its connection, and another worker runs it. Taken means run:
        any other line of this log about that task after the shutdown (the job runner's
        or Celery's trace of its outcome).
        """
        log = proc.log()
        marker = log.find("Warm shutdown")
        if marker < 0:
            return 0
        after = log[marker:]
        received = re.findall(r"Task \S+\[([0-9a-f-]+)\] received", after)
        return sum(
            1
            for task_id in received
            if any(
                task_id in line and not line.endswith("] received") for line in after.splitlines()
            )
        )

    def inject(self, fault: str) -> None:
        self.supervise()
        started = time.monotonic()
        entry: dict[str, Any] = {"fault": fault, "ok": True, "detail": ""}
        try:
            entry["detail"] = getattr(self, fault)()
        except Exception as exc:
            entry["ok"] = False
            entry["detail"] = f"{type(exc).__name__}: {exc}"
            self.findings.append(f"fault {fault} raised: {traceback.format_exc(limit=3)}")
        self.supervise()
        entry["recovered"] = self.wait_consumers(fault) and self.wait_accepting(fault)
        entry["seconds"] = time.monotonic() - started
        self.fault_log.append(entry)
        print(f"chaos: {fault}: {entry['detail']} ({entry['seconds']:.1f}s)", flush=True)

    def wait_accepting(self, after: str, timeout: float = 60) -> bool:
        """True once the API answers /readyz again (database and broker reachable)."""
        assert self.api is not None

        def ready() -> bool:
            try:
                return httpx.get(f"{self.api.url}/readyz", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, f"the API to be ready after {after}", interval=0.5)
            return True
        except AssertionError:
            self.reconnect_failures.append(f"api after {after}")
            return False

    def schedule(self) -> Iterator[str]:
        """The faults in order: one full round first, then shuffled rounds until ``rounds``
        are done or, with a ``duration``, until that many seconds have passed."""
        started = time.monotonic()
        rounds = 0
        while True:
            order = list(self.config.faults)
            if rounds:
                self.random.shuffle(order)
            for fault in order:
                elapsed = time.monotonic() - started
                if rounds and self.config.duration and elapsed >= self.config.duration:
                    return
                yield fault
            rounds += 1
            if not self.config.duration and rounds >= self.config.rounds:
                return

    def settle(self) -> float:
        """Wait for every job to end: while the backlog shrinks, up to ``settle_timeout``
        without progress (a stuck job), and four times that in all. Returns the seconds."""
        started = last_progress = time.monotonic()
        left = None
        while True:
            self.supervise()
            now_left = self.query(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"
            )[0][0]
            now = time.monotonic()
            if now_left == 0:
                break
            if left is None or now_left < left:
                left, last_progress = now_left, now
            if now - last_progress > self.config.settle_timeout:
                break
            if now - started > 4 * self.config.settle_timeout:
                break
            time.sleep(1)
        return time.monotonic() - started

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        for proc in self.stack.processes:
            # SIGCONT first: a stopped process group ignores SIGTERM until it runs again.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGCONT)
            proc.stop(timeout=15)
        self.smtp.close()
        self.origin.close()

    # -- invariants --------------------------------------------------------------------

    def check(self, settle_seconds: float) -> ChaosReport:
        assert self.load is not None
        assert self.api is not None
        submissions = self.load.submissions
        accepted = {s.job_id: s for s in submissions if s.status == 202 and s.job_id}
        rows = self.query(
            "SELECT id, kind, state, error_code, attempts, parent_id, error_message FROM jobs"
        )
        jobs = {str(r[0]): r for r in rows}
        not_final = [job_id for job_id, r in jobs.items() if r[2] not in TERMINAL]
        lost = [
            job_id for job_id in accepted if job_id not in jobs or jobs[job_id][2] not in TERMINAL
        ]

        deliveries = collections.Counter(
            str(m.message["X-Sous-Job-Id"]) for m in list(self.smtp.messages)
        )
        emails = [job_id for job_id, s in accepted.items() if s.kind == "email"]
        duplicated = sorted(job_id for job_id, n in deliveries.items() if n > 1)
        sent_emails = [j for j in emails if jobs.get(j, (None,) * 3)[2] == "succeeded"]
        undelivered = [j for j in sent_emails if deliveries[j] == 0]

        bad_outputs = self._bad_transcode_outputs(accepted, jobs)
        dead_letters = self._dead_letter_count()
        dead_lettered_jobs = [
            j for j, r in jobs.items()
            if r[2] == "failed" and r[3] == "worker_lost" and "dead-letter" in (r[6] or "")
        ]  # fmt: skip
        internal = [j for j, r in jobs.items() if r[3] == "internal_error"]

        failed_by_code = collections.Counter(
            jobs[j][3] for j in accepted if j in jobs and jobs[j][2] == "failed"
        )
        child_failures = collections.Counter(
            r[3] for r in rows if r[5] is not None and r[2] == "failed"
        )
        refused = collections.Counter(s.error for s in submissions if s.status == 503)
        other = collections.Counter(
            f"{s.status or 'no answer'} {s.error}".strip()
            for s in submissions
            if s.status not in (202, 503)
        )
        counts = {
            "submitted": len(submissions),
            "accepted (202)": len(accepted),
            "refused (503)": sum(refused.values()),
            "other answers": dict(other),
            "retried with the same key": sum(s.retried for s in submissions),
            "answered as replays": sum(s.replayed for s in submissions),
            "by kind": dict(collections.Counter(s.kind for s in accepted.values())),
            "succeeded": sum(1 for j in accepted if j in jobs and jobs[j][2] == "succeeded"),
            "failed": dict(failed_by_code),
            "cancelled": sum(1 for j in accepted if j in jobs and jobs[j][2] == "cancelled"),
            "batch children failed": dict(child_failures),
            "emails delivered": sum(deliveries.values()),
            "redelivered (attempts > 1)": sum(1 for r in rows if (r[4] or 0) > 1),
            "re-queued by the reaper": self._requeued_by_reaper(),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "settle seconds": round(settle_seconds, 1),
        }
        invariants = [
            Invariant("every accepted job ended (lost)", len(lost), 0, not lost, _ids(lost, jobs)),
            Invariant(
                "no email delivered twice (duplicated)", len(duplicated), 0, not duplicated,
                ", ".join(f"{j} x{deliveries[j]}" for j in duplicated[:10]),
            ),
            Invariant(
                "every succeeded email was delivered", len(undelivered), 0, not undelivered,
                ", ".join(undelivered[:10]),
            ),
            Invariant(
                "every succeeded transcode has a valid output", len(bad_outputs), 0,
                not bad_outputs, "; ".join(bad_outputs[:10]),
            ),
            Invariant(
                "nothing stuck in pending/queued/running/retrying", len(not_final), 0,
                not not_final, _ids(not_final, jobs),
            ),
            Invariant(
                "dead letters = jobs failed as dead-lettered",
                dead_letters, len(dead_lettered_jobs), dead_letters == len(dead_lettered_jobs),
                ", ".join(dead_lettered_jobs[:10]),
            ),
            Invariant(
                "no job failed with internal_error", len(internal), 0, not internal,
                _ids(internal, jobs),
            ),
            Invariant(
                "workers and API recovered after every fault", len(self.reconnect_failures), 0,
                not self.reconnect_failures, ", ".join(self.reconnect_failures),
            ),
            *self._rollout_invariants(jobs),
        ]  # fmt: skip
        findings = list(self.findings)
        if dead_letters:
            findings.append("dead letters: " + " | ".join(self.dead_letters()))
        server_errors = {k: v for k, v in other.items() if k.startswith("5")}
        if server_errors:
            findings.append(
                "the API answered 5xx other than 503 (not accepted, so not lost): "
                + _short(server_errors)
            )
        if self.unexpected_exits:
            findings.append(
                "processes that exited on their own: " + ", ".join(self.unexpected_exits)
            )
        return ChaosReport(self.config.seed, counts, invariants, self.fault_log, findings)

    def _rollout_invariants(self, jobs: dict[str, tuple[Any, ...]]) -> list[Invariant]:
        if not self.rollouts:
            return []
        not_exited = [r["label"] for r in self.rollouts if not r["exited"]]
        took_more = [r["label"] for r in self.rollouts if r["received_after_sigterm"]]
        unfinished = [
            f"{job_id} {jobs[job_id][2]} attempts {attempts}->{jobs[job_id][4]}"
            for r in self.rollouts
            for job_id, attempts in r["running"].items()
            if jobs[job_id][2] != "succeeded" or jobs[job_id][4] != attempts
        ]
        ran = sum(len(r["running"]) for r in self.rollouts)
        return [
            Invariant(
                "rollout: running transcodes finished in place", f"{ran - len(unfinished)}/{ran}",
                f"{ran}/{ran}", not unfinished, "; ".join(unfinished),
            ),
            Invariant(
                "rollout: no task taken after SIGTERM", len(took_more), 0, not took_more,
                ", ".join(took_more),
            ),
            Invariant(
                "rollout: worker exited by itself", len(self.rollouts) - len(not_exited),
                len(self.rollouts), not not_exited,
                ", ".join(f"{r['label']} {r['exit_seconds']:.1f}s" for r in self.rollouts),
            ),
        ]  # fmt: skip

    def _bad_transcode_outputs(
        self, accepted: dict[str, Submission], jobs: dict[str, tuple[Any, ...]]
    ) -> list[str]:
        assert self.api is not None
        bad = []
        folder = self.folder / "outputs"
        folder.mkdir(exist_ok=True)
        with self.api.client(self.load.key if self.load else None) as client:
            client.timeout = httpx.Timeout(30)
            for job_id, submission in accepted.items():
                if (
                    submission.kind != "transcode"
                    or jobs.get(job_id, (None,) * 3)[2] != "succeeded"
                ):
                    continue
                response = client.get(f"/v1/jobs/{job_id}/output")
                if response.status_code != 200:
                    bad.append(f"{job_id}: output answered {response.status_code}")
                    continue
                path = folder / job_id
                path.write_bytes(response.content)
                duration = probe_duration(path)
                path.unlink()
                if duration is None or abs(duration - submission.seconds) > 0.5:
                    bad.append(f"{job_id}: duration {duration} for a {submission.seconds}s clip")
        return bad

    def _dead_letter_count(self) -> int:
        return self.queue_counts("dead_letter")[0]

    def dead_letters(self, limit: int = 20) -> list[str]:
        """What the dead-letter queue holds: task, id and why, left in the queue."""
        described = []
        with Connection(self.services.rabbitmq.url, connect_timeout=5) as connection:
            channel = connection.channel()
            try:
                for _ in range(limit):
                    message = channel.basic_get(queue="dead_letter", no_ack=False)
                    if message is None:
                        break
                    headers = message.headers or {}
                    deaths = [
                        f"{d.get('reason')} from {d.get('queue')} x{d.get('count')}"
                        for d in headers.get("x-death") or []
                    ]
                    described.append(
                        f"{headers.get('task')}[{headers.get('id')}] retries="
                        f"{headers.get('retries')} x-death: {'; '.join(deaths)}"
                    )
            finally:
                channel.close()  # unacknowledged: the messages go back to the queue
        return described


def _ids(job_ids: list[str], jobs: dict[str, tuple[Any, ...]]) -> str:
    described = []
    for job_id in job_ids[:10]:
        row = jobs.get(job_id)
        described.append(
            f"{job_id} ({row[1]} {row[2]} {row[3] or ''} attempts={row[4]})" if row else job_id
        )
    return "; ".join(described)


def run_chaos(config: ChaosConfig, folder: Path, log: Callable[[str], None] = print) -> ChaosReport:
    """Run the fault suite in ``folder`` (its private servers are removed at the end)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {seconds: make_clip(folder / f"clip-{seconds:g}s.mp4", seconds) for seconds in (1, 2)}
    with PrivateServices.start() as services:
        log(
            f"chaos: private RabbitMQ :{services.rabbitmq.port}, Redis :{services.redis.port}, "
            f"PostgreSQL :{services.postgres.port}; logs in {folder / 'logs'}"
        )
        chaos = Chaos(config, folder, services)
        try:
            chaos.boot()
            key = chaos.stack.create_key("chaos")
            assert chaos.api is not None
            chaos.load = Load(chaos.api, key, chaos.origin, clips, config.seed, config.rate)
            chaos.load.start()
            time.sleep(config.pause * 2)
            for fault in chaos.schedule():
                chaos.inject(fault)
                time.sleep(config.pause)
            chaos.load.stop()
            log(f"chaos: load stopped after {len(chaos.load.submissions)} submissions; settling")
            settle_seconds = chaos.settle()
            return chaos.check(settle_seconds)
        finally:
            chaos.close()
