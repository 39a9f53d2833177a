"""Fixtures of the client's tests: one real Sous installation for the whole client suite
(API, fast and heavy workers, an SMTP sink), test clips made with ffmpeg, a TCP proxy that
drops connections, and a pseudo-terminal to run the ``sous-client`` command in."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import process_commands
from sous_client import Sous
from support.sinks import SmtpSink
from support.stack import Api, Origin, Stack, free_port, make_stack, wait_until

BIN = Path(sys.executable).parent


def make_clip(path: Path, seconds: float, size: str) -> Path:
    """A test pattern with a tone, H.264 + AAC, encoded as fast as ffmpeg can."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds), "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(path)],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second of 320x240: transcodes in well under a second."""
    return make_clip(tmp_path_factory.mktemp("clips") / "tiny.mp4", 1, "320x240")


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight seconds of 720p: its transcode to 480p runs for a few seconds, long enough for
    the worker to report progress several times (once a second)."""
    return make_clip(tmp_path_factory.mktemp("clips") / "long.mp4", 8, "1280x720")


@pytest.fixture(scope="session")
def mail_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


@dataclass
class ClientStack:
    """The client suite's installation: a fast and a heavy worker, an API, and a second
    API that accepts uploads of at most ``CAPPED_UPLOAD_BYTES``."""

    stack: Stack
    api: Api
    capped_api: Api


#: Largest upload the second API accepts.
CAPPED_UPLOAD_BYTES = 1024


def _start_api(stack: Stack, **overrides: str) -> Api:
    """An API process, started without waiting for it to answer."""
    env = {**stack.env, **overrides, "SOUS_API_PORT": str(free_port())}
    proc = stack.start(f"api-{env['SOUS_API_PORT']}", "sous-api", env=env)
    return Api(f"http://127.0.0.1:{env['SOUS_API_PORT']}", proc)


def _stop_all(stack: Stack) -> None:
    """SIGTERM every process at once (each then gets its warm shutdown in parallel)."""
    for proc in stack.processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)


@pytest.fixture(scope="session")
def client_stack(
    tmp_path_factory: pytest.TempPathFactory, mail_sink: SmtpSink
) -> Iterator[ClientStack]:
    with make_stack(
        tmp_path_factory.mktemp("client-stack"),
        SOUS_SMTP_PORT=str(mail_sink.port),
        SOUS_HEARTBEAT_INTERVAL="1",
        SOUS_MAX_RETRIES="0",
    ) as stack:
        # Everything starts at once, then each is waited for: startup is the slow part.
        fast_argv = process_commands.worker_fast(20, f"client-fast-{secrets.token_hex(3)}@%h")
        heavy_argv = process_commands.worker_heavy(2, f"client-heavy-{secrets.token_hex(3)}@%h")
        workers = [
            stack.start(label, *argv, "--without-mingle", "--without-gossip")
            for label, argv in (("worker-fast", fast_argv), ("worker-heavy", heavy_argv))
        ]
        api = _start_api(stack)
        capped_api = _start_api(stack, SOUS_MAX_UPLOAD_BYTES=str(CAPPED_UPLOAD_BYTES))
        for worker in workers:
            worker.wait_for_log(r"ready\.", 60)
        for server in (api, capped_api):
            wait_until(server.alive, 30, "the API to answer /healthz")
        yield ClientStack(stack, api, capped_api)
        _stop_all(stack)


@pytest.fixture(scope="session")
def sous_stack(client_stack: ClientStack) -> Stack:
    return client_stack.stack


@pytest.fixture(scope="session")
def api(client_stack: ClientStack) -> Api:
    return client_stack.api


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def tenant_key(sous_stack: Stack) -> str:
    """A key of a new tenant: each test sees only its own jobs."""
    return sous_stack.create_key(f"client-{secrets.token_hex(3)}")


@pytest.fixture
def sous(api: Api, tenant_key: str) -> Iterator[Sous]:
    with Sous(api.url, tenant_key, timeout=30) as client:
        yield client


class DroppingProxy:
    """A TCP proxy to ``127.0.0.1:upstream_port``. Its first ``drops`` connections forward
    the request whole, wait for the first bytes of the answer (the API answers once the
    job is committed) and then close the client's side without passing any of it on: the
    client saw its request sent and the connection broken, as with a flaky network."""

    def __init__(self, upstream_port: int, drops: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drops = drops
        self.connections = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                drop = self.connections <= self.drops
            threading.Thread(target=self._serve, args=(client, drop), daemon=True).start()

    def _serve(self, client: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if drop:
                    with self._lock:
                        self.dropped += 1
                    return
                client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


@pytest.fixture
def dropping_proxy(api: Api) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(int(api.url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


class Terminal:
    """``sous-client`` running with a pseudo-terminal as its stderr (and its stdin and
    controlling terminal, so Ctrl-C typed into it is a real SIGINT); stdout is the
    terminal too, or a pipe with ``stdout_pipe`` (for ``--json`` output)."""

    def __init__(self, args: list[str], env: dict[str, str], stdout_pipe: bool = False) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))

        def become_terminal_owner() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # As a shell starts a foreground command: Ctrl-C interrupts it even when the
            # tests themselves were started with SIGINT ignored (a background job).
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.process = subprocess.Popen(
            [str(BIN / "sous-client"), *args],
            stdin=slave,
            stdout=subprocess.PIPE if stdout_pipe else slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=become_terminal_owner,
        )
        os.close(slave)
        self.screen = b""
        self._stdout = b""
        self._stdout_reader = None
        if self.process.stdout is not None:
            # Read concurrently: a child blocked on a full pipe would stop drawing, and
            # one blocked on a full terminal would never close its stdout.
            self._stdout_reader = threading.Thread(target=self._read_stdout, daemon=True)
            self._stdout_reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    def _read(self, timeout: float) -> bytes | None:
        """What the terminal showed within ``timeout`` (b"" if nothing), None once closed."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the command's side of the terminal is closed
            return None
        self.screen += data
        return data or None

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            if time.monotonic() > deadline or self._read(0.2) is None:
                raise AssertionError(
                    f"{pattern!r} never appeared; the terminal shows:\n{self.text}"
                )
        return self.text

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Wait for the command to exit; its exit status and its stdout (when piped)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"sous-client did not exit; the terminal shows:\n{self.text}")
            self._read(0.1)
        while self._read(0):
            pass
        os.close(self.master)
        if self._stdout_reader is not None:
            self._stdout_reader.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()
        return self.process.returncode, self._stdout.decode()

    @property
    def text(self) -> str:
        return self.screen.decode(errors="replace")


@pytest.fixture
def cli_env(api: Api, tenant_key: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SOUS_")}
    return {**env, "SOUS_URL": api.url, "SOUS_API_KEY": tenant_key}


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    """``terminal(args, env, stdout_pipe=False)`` runs ``sous-client`` in a new pty."""
    started: list[Terminal] = []

    def start(args: list[str], env: dict[str, str], stdout_pipe: bool = False) -> Terminal:
        started.append(Terminal(args, env, stdout_pipe))
        return started[-1]

    yield start
    for shell in started:
        if shell.process.poll() is None:
            shell.process.kill()
            shell.process.wait(10)
