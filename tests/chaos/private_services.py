"""Private RabbitMQ, Redis and PostgreSQL servers on free ports, in a temporary folder.

The fault suite stops and restarts these under load; the machine's shared servers (5672,
6379, 5432) are never touched. Every server is started with a bounded wait and stopped
(killed if it has to be) by ``close``, and its files removed with the folder.

    with PrivateServices.start() as services:
        services.rabbitmq.restart()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.stack import free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: Seconds a server may take to start or stop before the suite gives up on it.
BOOT_TIMEOUT = 90.0


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _kill_group(popen: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout)


@dataclass
class PrivateRabbitMQ:
    """One RabbitMQ node (``chaos-<random>@localhost``) with the management plugin.

    Its Erlang cookie lives in the folder (``HOME``), so ``rabbitmqctl`` reaches this
    node only; it registers with the machine's epmd, which only maps names to ports.
    """

    folder: Path
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"chaos-{secrets.token_hex(4)}@localhost")
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            # Not the machine's /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cookie = self.folder / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.folder / "rabbitmq.conf").write_text(
            f"management.tcp.port = {self.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            # Longer than any job of the suite; a frozen consumer must not be cut off by it.
            "consumer_timeout = 600000\n"
            "loopback_users.guest = true\n"
            # The suite fills the disk with nothing; do not refuse publishes on a small disk.
            "disk_free_limit.absolute = 50MB\n"
        )

    def start(self) -> None:
        log = (self.folder / "server.out").open("ab")
        self.popen = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def ready() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"RabbitMQ exited:\n{self.log_tail()}")
            return port_open(self.port) and port_open(self.management_port)

        wait_until(ready, BOOT_TIMEOUT, "the private RabbitMQ to listen", interval=0.3)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ctl("stop", timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
        _kill_group(self.popen)
        wait_until(lambda: not port_open(self.port), 30, "RabbitMQ's port to close")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        text = (self.folder / "server.out").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class PrivateRedis:
    """A Redis without persistence: Sous keeps job state in PostgreSQL, and the result
    backend only holds group results, which nothing in Sous reads after a restart."""

    folder: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "server.out").open("ab")
        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_until(lambda: port_open(self.port), BOOT_TIMEOUT, "the private Redis to listen")

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(15)
        _kill_group(self.popen)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@dataclass
class PrivatePostgres:
    """A PostgreSQL 15 cluster run as the ``postgres`` user (``initdb`` refuses root),
    trust auth, listening on 127.0.0.1 and a socket in its own folder."""

    folder: Path
    port: int = field(default_factory=free_port)
    database: str = "sous"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _as_postgres(self, *argv: str, timeout: float = BOOT_TIMEOUT) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{argv[0]} failed: {result.stdout}\n{result.stderr}")

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-o", options, "-w", "-t", str(int(BOOT_TIMEOUT)), "start",
        )  # fmt: skip

    def create_database(self) -> None:
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@dataclass
class PrivateServices:
    folder: Path
    rabbitmq: PrivateRabbitMQ
    redis: PrivateRedis
    postgres: PrivatePostgres

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[PrivateServices]:
        """Start all three in a new folder under the system temp dir, which the
        ``postgres`` user can reach (pytest's temporary folders are private to root)."""
        folder = Path(tempfile.mkdtemp(prefix="sous-chaos-services-"))
        folder.chmod(0o711)
        services = cls(
            folder,
            PrivateRabbitMQ(folder / "rabbitmq"),
            PrivateRedis(folder / "redis"),
            PrivatePostgres(folder / "postgres"),
        )
        try:
            services.rabbitmq.prepare()
            services.rabbitmq.start()
            services.redis.start()
            services.postgres.prepare()
            services.postgres.start()
            services.postgres.create_database()
            yield services
        finally:
            services.close()

    def close(self) -> None:
        for stop in (self.rabbitmq.stop, self.redis.stop, self.postgres.stop):
            try:
                stop()
            except Exception as exc:
                print(f"chaos: stopping a private service failed: {exc}", flush=True)
        if (self.postgres.data / "postmaster.pid").exists():
            pid = int((self.postgres.data / "postmaster.pid").read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)
