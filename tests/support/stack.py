"""Run Sous for real in tests: a private database, vhost and Redis DB, real processes."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy.orm import Session

import process_commands
from sous_core import apikeys
from sous_core.db.engine import make_engine

BIN = Path(sys.executable).parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
OK_BODY = b"hello from the test origin\n" * 100
OK_SHA256 = hashlib.sha256(OK_BODY).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Stack:
    """One isolated Sous installation: its own database, vhost and Redis DB."""

    name: str
    env: dict[str, str]
    workdir: Path
    processes: list[Proc] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def create_key(self, tenant: str) -> str:
        """A new API key for ``tenant``, made in-process (the CLI is tested on its own)."""
        engine = make_engine(self.database_url())
        try:
            with Session(engine) as session, session.begin():
                tenant_row, _ = apikeys.get_or_create_tenant(session, tenant)
                return apikeys.create_key(session, tenant_row).token
        finally:
            engine.dispose()

    def create_key_with_cli(self, tenant: str) -> str:
        return (
            self.run("sous", "keys", "create", "--tenant", tenant).stdout.strip().splitlines()[-1]
        )

    def start(self, label: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc.start(
            label, [str(BIN / args[0]), *args[1:]], env or self.env, self.workdir / f"{label}.log"
        )
        self.processes.append(proc)
        return proc

    def start_api(self, env: dict[str, str] | None = None) -> Api:
        env = dict(env or self.env)
        env["SOUS_API_PORT"] = str(free_port())
        proc = self.start(f"api-{env['SOUS_API_PORT']}", "sous-api", env=env)
        api = Api(f"http://127.0.0.1:{env['SOUS_API_PORT']}", proc)
        wait_until(api.alive, 30, "the API to answer /healthz")
        return api

    def start_fast_worker(
        self, label: str = "worker-fast", concurrency: int = 20, env: dict[str, str] | None = None
    ) -> Proc:
        argv = process_commands.worker_fast(concurrency, f"{label}-{secrets.token_hex(3)}@%h")
        proc = self.start(label, *argv, "--without-mingle", "--without-gossip", env=env)
        proc.wait_for_log(r"ready\.", 60)
        return proc

    def start_heavy_worker(
        self, label: str = "worker-heavy", concurrency: int = 2, env: dict[str, str] | None = None
    ) -> Proc:
        argv = process_commands.worker_heavy(concurrency, f"{label}-{secrets.token_hex(3)}@%h")
        proc = self.start(label, *argv, "--without-mingle", "--without-gossip", env=env)
        proc.wait_for_log(r"ready\.", 60)
        return proc

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """``sous queues --json`` by queue name (asserting it read the management API)."""
        stats = json.loads(self.run("sous", "queues", "--json").stdout)
        assert stats["source"] == "management"
        return {queue["name"]: queue for queue in stats["queues"]}

    def database_url(self) -> str:
        return self.env["SOUS_DATABASE_URL"]

    def libpq_url(self) -> str:
        """The database URL as psycopg takes it (no SQLAlchemy driver prefix)."""
        return self.database_url().replace("postgresql+psycopg://", "postgresql://")


@dataclass
class Proc:
    label: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, label: str, argv: list[str], env: dict[str, str], log_path: Path) -> Proc:
        log = log_path.open("wb")
        popen = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return cls(label, popen, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.label} exited ({self.popen.returncode}):\n{self.log()}"
                )
            return re.search(pattern, self.log()) is not None

        wait_until(seen, timeout, f"{pattern!r} in the log of {self.label}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM) without waiting for it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


#: Lines of each log a failed test's report shows.
REPORT_LINES = 40
RABBITMQ_LOGS = Path("/var/log/rabbitmq")


def failure_report(processes: list[Proc], since: datetime) -> str:
    """The last lines of the RabbitMQ log since ``since`` and of each process's log.

    The processes come last, in the order they started: where a report is cut to its
    end, what is left is the most recently started process, most often the one the test
    was waiting for.
    """
    parts = []
    broker = _rabbitmq_log_since(since)
    if broker:
        parts.append("----- RabbitMQ log -----")
        parts.extend(broker[-REPORT_LINES:])
    for proc in processes:
        state = "running" if proc.popen.poll() is None else f"exited {proc.popen.returncode}"
        parts.append(f"----- {proc.label} (pid {proc.popen.pid}, {state}) -----")
        parts.append(proc.log_tail(REPORT_LINES))
    return "\n".join(parts)


def _rabbitmq_log_since(since: datetime) -> list[str]:
    """The RabbitMQ log's lines stamped at or after ``since`` (none if it is not readable)."""
    stamp = since.strftime("%Y-%m-%d %H:%M:%S")
    lines: list[str] = []
    for path in sorted(RABBITMQ_LOGS.glob("rabbit@*.log")):
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").splitlines()
            # Continuation lines have no stamp: keep them with the line they continue.
            keep = False
            for line in text:
                if line[:4].isdigit():
                    keep = line[:19] >= stamp
                if keep:
                    lines.append(line)
    return lines


def stop_all(processes: list[Proc]) -> None:
    """Stop every process, all at once: each worker's warm shutdown takes a second or
    two, and they need not wait for one another."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.stop()


@dataclass
class Api:
    url: str
    proc: Proc

    def alive(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.proc.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def wait_for_job(client: httpx.Client, job_id: str, states: set[str], timeout: float = 30):
    def reached() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_until(reached, timeout, f"job {job_id} to reach {sorted(states)}", 0.1)


TERMINAL = {"succeeded", "failed", "cancelled"}


#: Redis DB numbers the test stacks take turns on (0 is the dev stack's; 1-3 left free).
TEST_REDIS_DBS = range(4, 16)
_CLAIM_KEY = "sous-test:claimed-by"


def claim_redis_db(timeout: float = 120) -> int:
    """A Redis DB number no other running stack uses, claimed by a key inside that DB.

    Tests run in parallel processes, each with stacks of its own; a stack's teardown
    flushes its DB, so two stacks must never share one. The claim is ``SET NX`` in the DB
    itself, so the teardown's ``FLUSHDB`` also releases it; a crashed run's claims expire.
    """
    owner = f"{os.getpid()}-{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout
    while True:
        for db in sorted(TEST_REDIS_DBS, key=lambda _: secrets.randbelow(1000)):
            with redis.Redis(host="127.0.0.1", port=6379, db=db) as client:
                if client.set(_CLAIM_KEY, owner, nx=True, ex=3600):
                    return db
        if time.monotonic() > deadline:
            raise AssertionError(f"every test Redis DB {TEST_REDIS_DBS} stayed claimed")
        time.sleep(0.5)


def database_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def create_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def private_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    create_database(name)
    try:
        yield database_url(name)
    finally:
        drop_database(name)


@contextlib.contextmanager
def make_stack(tmp_path: Path, **overrides: str) -> Iterator[Stack]:
    name = f"sous_it_{secrets.token_hex(4)}"
    redis_db = claim_redis_db()
    create_database(name)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    env = {
        **os.environ,
        "SOUS_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{name}",
        "SOUS_RESULT_BACKEND": f"redis://127.0.0.1:6379/{redis_db}",
        "SOUS_DATABASE_URL": database_url(name),
        "SOUS_RABBITMQ_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:15672",
        "SOUS_FETCH_ALLOW_NETWORKS": "127.0.0.1/32",
        "SOUS_MAX_RETRIES": "2",
        "SOUS_RETRY_BACKOFF": "1",
        "SOUS_STORAGE_DIR": str(tmp_path / "storage"),
        "SOUS_LOG_LEVEL": "INFO",
        # Readable logs that tests match patterns against; the JSON format has its own tests.
        "SOUS_LOG_FORMAT": "text",
        # Many workers run at once: metrics servers only where a test asks for one.
        "SOUS_METRICS_PORT": "0",
        **overrides,
    }
    stack = Stack(name=name, env=env, workdir=tmp_path)
    started = datetime.now(UTC)
    try:
        stack.run("sous", "db", "upgrade")
        yield stack
    except Exception:
        # What CI shows of a failed test: the end of each process's log and the broker's.
        print(failure_report(stack.processes, started), file=sys.stderr)
        raise
    finally:
        stop_all(stack.processes)
        rabbitmqctl("delete_vhost", name)
        drop_database(name)
        client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
        client.flushdb()
        client.close()


class _BackloggedHTTPServer(http.server.ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: a burst of connections (a batch
    # of 100 fetches starting at once) overflows it, and the kernel makes the rest retry
    # their SYN a whole second later. Real servers listen with hundreds.
    request_queue_size = 1024


class LocalHttpServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``handler`` until closed."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = _BackloggedHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Origin:
    """A local HTTP server the fetch jobs talk to; counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.closing = threading.Event()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                origin.hits[self.path] += 1
                if path == "/ok":
                    self._send(200, OK_BODY)
                elif path.startswith("/status/"):
                    self._send(int(path.rsplit("/", 1)[1]), b"status\n")
                elif path.startswith("/drip/"):
                    self._drip(float(path.rsplit("/", 1)[1]))
                elif path.startswith("/delay/"):
                    self._delayed(float(path.rsplit("/", 1)[1]))
                elif path.startswith("/bytes/"):
                    self._send(200, b"b" * int(path.rsplit("/", 1)[1]))
                elif path == "/redirect":
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    self.send_response(302)
                    self.send_header("Location", query["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/hang":
                    # Headers never come; the fetch times out. Closing the origin ends it.
                    origin.closing.wait(30)
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _delayed(self, seconds: float) -> None:
                with origin._lock:
                    origin.in_flight += 1
                    origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
                try:
                    time.sleep(seconds)
                    self._send(200, OK_BODY)
                finally:
                    with origin._lock:
                        origin.in_flight -= 1

            def _drip(self, seconds: float) -> None:
                # A slow body: 20 chunks spread over ``seconds``, so a job stays running.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(20 * 10))
                self.end_headers()
                for _ in range(20):
                    try:
                        self.wfile.write(b"x" * 10)
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(seconds / 20)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = LocalHttpServer(Handler)
        self.url = self.server.url

    def close(self) -> None:
        self.closing.set()
        self.server.close()
