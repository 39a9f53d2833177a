"""Run the whole Sous platform in the foreground, on the real services or embedded in one host.

Probes RabbitMQ, Redis and PostgreSQL (``SOUS_*`` settings). When all three answer it
runs against them ("services mode"); otherwise it falls back to SQLite and kombu's
filesystem broker under the data folder ("embedded mode"), which needs no servers.
Then it migrates the database and runs the API, both workers, the scheduler and
Flower, printing their output prefixed by name. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import psycopg
import redis
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url
from psycopg import sql
from sqlalchemy.engine import make_url

import process_commands
from sous_core.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
#: Executables of the virtualenv running this script, so children use the same packages.
BIN = Path(sys.executable).parent
#: Seconds children get to finish after SIGTERM (Celery's warm shutdown) before SIGKILL.
STOP_TIMEOUT = 15.0
PROBE_TIMEOUT = 2
#: Linux prctl option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
NAME_WIDTH = 12
COLORS = ("36", "33", "35", "32", "34", "31")


@dataclass
class Child:
    """One supervised process, in its own process group so its pool children stop with it."""

    name: str
    argv: list[str]
    color: str
    #: Variables for this process only (its metrics port).
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class Output:
    """Serialises lines from the reader threads, each prefixed by its process's name."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.colored = stream.isatty()
        self.lock = threading.Lock()
        self.closed = False

    def line(self, name: str, text: str, color: str = "1") -> None:
        prefix = f"{name:<{NAME_WIDTH}} |"
        if self.colored:
            prefix = f"\033[{color}m{prefix}\033[0m"
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(f"{prefix} {text}\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                # The reader went away (`make run | head`, a closed terminal): keep
                # supervising, so the children are still stopped cleanly.
                self.closed = True

    def say(self, text: str) -> None:
        self.line("devstack", text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=("auto", "services", "embedded"),
        default="auto",
        help="services: require RabbitMQ, Redis and PostgreSQL; embedded: SQLite and a "
        "filesystem broker; auto (default): services when all three answer, else embedded",
    )
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    parser.add_argument(
        "--mail-sink-port",
        type=int,
        default=1025,
        help="port of the development mail sink started when SOUS_SMTP_HOST is not set "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / ".sous",
        help="folder for the embedded database, broker and results, and the beat "
        "schedule (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else 'no details'}"


def probe_broker(url: str) -> str | None:
    """Why RabbitMQ is unusable, or ``None`` when an AMQP connection opens."""
    if not url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return "SOUS_BROKER_URL is not an AMQP URL"
    try:
        with Connection(url, connect_timeout=PROBE_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        return _describe(exc)
    return None


def probe_redis(url: str) -> str | None:
    """Why Redis is unusable, or ``None`` when it answers PING."""
    if not url.startswith(("redis://", "rediss://")):
        return "SOUS_RESULT_BACKEND is not a Redis URL"
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )
    try:
        client.ping()
    except Exception as exc:
        return _describe(exc)
    finally:
        client.close()
    return None


def probe_postgres(url: str, say: Callable[[str], None]) -> str | None:
    """Why PostgreSQL is unusable, or ``None``; creates the URL's database when missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return "SOUS_DATABASE_URL is not a PostgreSQL URL"
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        psycopg.connect(conninfo, connect_timeout=PROBE_TIMEOUT).close()
    except psycopg.Error as exc:
        # The server may be up with the database simply not created yet.
        maintenance = parsed.set(drivername="postgresql", database="postgres")
        if parsed.database and _create_database(
            maintenance.render_as_string(hide_password=False), parsed.database
        ):
            say(f"created the PostgreSQL database {parsed.database!r}")
            return None
        return _describe(exc)
    return None


def _create_database(maintenance_conninfo: str, name: str) -> bool:
    """Create database ``name``; False when the server is unreachable or it already exists."""
    try:
        connection = psycopg.connect(
            maintenance_conninfo, connect_timeout=PROBE_TIMEOUT, autocommit=True
        )
    except psycopg.Error:
        return False
    with connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if exists:
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def probe_services(settings: Settings, say: Callable[[str], None]) -> dict[str, str]:
    """Each unusable service's name mapped to why (empty when all three answer)."""
    probes: tuple[tuple[str, str, Callable[[str], str | None]], ...] = (
        ("RabbitMQ", settings.broker_url, probe_broker),
        ("Redis", settings.result_backend, probe_redis),
        ("PostgreSQL", settings.database_url, partial(probe_postgres, say=say)),
    )
    failures = {}
    for name, url, probe in probes:
        error = probe(url)
        if error is None:
            say(f"{name} ok at {maybe_sanitize_url(url)}")
        else:
            failures[name] = f"{maybe_sanitize_url(url)}: {error}"
    return failures


def embedded_env(data_dir: Path) -> dict[str, str]:
    """Settings pointing every process at SQLite and the filesystem broker in ``data_dir``."""
    broker, results = data_dir / "broker", data_dir / "results"
    for path in (broker, results):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "SOUS_DATABASE_URL": f"sqlite:///{data_dir / 'sous.db'}",
        "SOUS_BROKER_URL": "filesystem://",
        "SOUS_RESULT_BACKEND": f"file://{results}",
        "SOUS_EMBEDDED_DIR": str(broker),
    }


def choose_mode(args: argparse.Namespace, settings: Settings, out: Output) -> dict[str, str]:
    """The ``SOUS_*`` overrides of the chosen mode: none for services mode.

    Exits when ``--mode services`` is forced but a service does not answer.
    """
    if args.mode == "embedded":
        return embedded_env(args.data_dir)
    failures = probe_services(settings, out.say)
    if not failures:
        return {}
    for name, why in failures.items():
        out.say(f"{name} is unreachable: {why}")
    if args.mode == "services":
        out.say("--mode services needs all three; start them or use --mode embedded")
        sys.exit(1)
    out.say("falling back to the embedded mode (SQLite + filesystem broker, no servers)")
    return embedded_env(args.data_dir)


def print_banner(
    out: Output, settings: Settings, overrides: dict[str, str], flower: bool, settings_file: Path
) -> None:
    api = f"http://{settings.api_host}:{settings.api_port}"
    embedded = bool(overrides)
    if embedded:
        mode = "embedded mode (SQLite + filesystem broker, no servers needed)"
        flower_line = "not started: Flower needs a real broker (services mode)"
    else:
        mode = "services mode (RabbitMQ + Redis + PostgreSQL)"
        flower_line = f"http://127.0.0.1:{flower_port()}" if flower else "not started (--no-flower)"
    env_prefix = "".join(f"{key}={shlex.quote(value)} " for key, value in overrides.items())
    rule = "=" * 78
    for text in (
        rule,
        f"Sous devstack: {mode}",
        f"API:     {api}   (docs: {api}/docs)",
        f"Flower:  {flower_line}",
        f"Metrics: {api}/metrics, "
        + ", ".join(f"{name} :{port}/metrics" for name, port in METRICS_PORTS.items()),
        f"Settings: {settings_file} (load with: set -a; . {settings_file}; set +a)",
        f"API key: {env_prefix}uv run sous keys create --tenant demo",
        "Stop:    Ctrl-C",
        rule,
    ):
        out.say(text)


def write_env_file(path: Path, settings: Settings, overrides: dict[str, str]) -> None:
    """Record the settings of this run, so ``sous`` in another shell reaches the same data."""
    chosen = {
        "SOUS_DATABASE_URL": settings.database_url,
        "SOUS_BROKER_URL": settings.broker_url,
        "SOUS_RESULT_BACKEND": settings.result_backend,
        **{key: value for key, value in os.environ.items() if key.startswith("SOUS_")},
        **overrides,
    }
    lines = [
        "# Written by `make run` (scripts/devstack.py): the settings of the running platform.",
        "# Load it in another shell with: set -a; . .sous/env; set +a",
        *(f"{key}={shlex.quote(value)}" for key, value in sorted(chosen.items())),
    ]
    path.write_text("\n".join(lines) + "\n")


def flower_port() -> str:
    return os.environ.get("SOUS_FLOWER_PORT") or "5555"


def mail_sink_env(port: int) -> dict[str, str]:
    """Email jobs go to the local mail sink unless an SMTP server was configured."""
    if "SOUS_SMTP_HOST" in os.environ:
        return {}
    return {"SOUS_SMTP_HOST": "127.0.0.1", "SOUS_SMTP_PORT": str(port)}


#: Where each process serves /metrics in `make run` (the API serves it on its own port).
METRICS_PORTS = {"worker-fast": 9101, "worker-heavy": 9102, "scheduler": 9103}


def build_children(data_dir: Path, flower: bool, mail_sink_port: int | None) -> list[Child]:
    specs = [
        ("api", process_commands.api()),
        ("worker-fast", process_commands.worker_fast()),
        ("worker-heavy", process_commands.worker_heavy()),
        ("scheduler", process_commands.scheduler()),
    ]
    if flower:
        specs.append(("flower", process_commands.flower(flower_port())))
    if mail_sink_port is not None:
        specs.insert(0, ("mail-sink", process_commands.mail_sink(mail_sink_port)))
    return [
        Child(
            name,
            [str(BIN / argv[0]), *argv[1:]],
            COLORS[i % len(COLORS)],
            {"SOUS_METRICS_PORT": str(METRICS_PORTS[name])} if name in METRICS_PORTS else {},
        )
        for i, (name, argv) in enumerate(specs)
    ]


def log_format(stream: IO[str]) -> str:
    """Children write into a pipe; they log as text when this script's output is a terminal."""
    return os.environ.get("SOUS_LOG_FORMAT") or ("text" if stream.isatty() else "json")


def migrate(env: dict[str, str], out: Output) -> None:
    """Run ``sous db upgrade``; exit with its output when it fails."""
    result = subprocess.run(
        [str(BIN / "sous"), "db", "upgrade"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        # Its own group: a Ctrl-C at the terminal must not cut a migration short.
        process_group=0,
    )
    for text in (result.stdout + result.stderr).splitlines():
        out.line("migrate", text)
    if result.returncode != 0:
        out.say(f"migrations failed (exit code {result.returncode}); nothing was started")
        sys.exit(1)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if devstack itself dies, so nothing is left orphaned.

    Runs between fork and exec while reader threads exist, so it only calls into the
    C library loaded beforehand (no imports, no locks).
    """
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(child: Child, env: dict[str, str], out: Output) -> None:
    child.process = subprocess.Popen(
        child.argv,
        env={**env, **child.env},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,
        preexec_fn=_die_with_parent,
    )
    child.reader = threading.Thread(target=_relay, args=(child, out), daemon=True)
    child.reader.start()
    out.say(f"started {child.name} (pid {child.process.pid})")


def _relay(child: Child, out: Output) -> None:
    assert child.process is not None
    assert child.process.stdout is not None
    with child.process.stdout as stream:
        for raw in stream:
            out.line(child.name, raw.decode(errors="replace").rstrip(), child.color)


def _group_alive(child: Child) -> bool:
    """Whether any process of the child's group is left (its leader reaped first)."""
    assert child.process is not None
    child.process.poll()
    try:
        os.killpg(child.process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(child: Child, signum: int) -> None:
    assert child.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signum)


def stop_all(children: list[Child], out: Output) -> None:
    """SIGTERM every child, wait up to STOP_TIMEOUT for their groups to go, SIGKILL the rest.

    SIGTERM goes to each child's main process only: it shuts its own pool down after
    the running tasks finish, whereas a prefork pool process getting SIGTERM itself
    would die mid-task.
    """
    started = [child for child in children if child.process is not None]
    for child in started:
        assert child.process is not None
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(_group_alive(child) for child in started):
        time.sleep(0.1)
    for child in started:
        if _group_alive(child):
            out.say(f"{child.name} did not stop within {STOP_TIMEOUT:g}s; killing it")
            _signal_group(child, signal.SIGKILL)
    for child in started:
        assert child.process is not None
        assert child.reader is not None
        child.process.wait()
        child.reader.join(timeout=5)


def supervise(children: list[Child], stop: threading.Event, out: Output) -> int:
    """Wait for a stop signal or a child's exit; stop everything; the exit status."""
    while not stop.wait(0.2):
        for child in children:
            assert child.process is not None
            code = child.process.poll()
            if code is not None:
                out.say(
                    f"{child.name} exited on its own with exit code {code}; stopping the others"
                )
                stop_all(children, out)
                return 1
    out.say(
        f"stopping (SIGTERM to every process, up to {STOP_TIMEOUT:g}s for running tasks to finish)"
    )
    stop_all(children, out)
    out.say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    out = Output(sys.stdout)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    settings = get_settings()
    overrides = choose_mode(args, settings, out)
    flower = not args.no_flower and not overrides
    mail = mail_sink_env(args.mail_sink_port)
    settings_file = args.data_dir / "env"
    write_env_file(settings_file, settings, {**overrides, **mail})
    print_banner(out, settings, overrides, flower, settings_file)
    if mail:
        out.say(f"Mail:    email jobs go to the local mail sink on port {args.mail_sink_port}")
    # Unbuffered children, so their lines show up as they happen rather than in bursts.
    env = {
        **os.environ,
        **overrides,
        **mail,
        "PYTHONUNBUFFERED": "1",
        "SOUS_LOG_FORMAT": log_format(sys.stdout),
    }
    migrate(env, out)
    if stop.is_set():
        out.say("stopped")
        return 0
    children = build_children(args.data_dir, flower, args.mail_sink_port if mail else None)
    for child in children:
        start(child, env, out)
    return supervise(children, stop, out)


if __name__ == "__main__":
    sys.exit(main())
