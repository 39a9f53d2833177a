"""``scripts/devstack.py`` in embedded mode runs a fetch end to end and stops cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BODY = b"served to the devstack's fast worker\n"
#: Generous: on two shared cores beside another test file's processes, five processes
#: importing at once took over a minute in one CI run. The test is about what starts,
#: not how fast.
STARTUP_TIMEOUT = 180.0
JOB_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
PID_LINE = re.compile(r"started (\S+) \(pid (\d+)\)")


class _BodyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def body_server() -> Iterator[str]:
    """Base URL of a local server answering every GET with ``BODY``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BodyHandler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in PID_LINE.findall(output)}


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_healthy(client: httpx.Client, devstack: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert devstack.poll() is None, f"devstack exited early:\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.3)
    output = log.read_text()
    pytest.fail(
        f"/healthz did not answer within {STARTUP_TIMEOUT:g}s; "
        f"the children: {_cpu_report(_child_pids(output))}\n{output}"
    )


def _cpu_report(pids: dict[str, int]) -> str:
    """Each child's state and CPU seconds so far: a stuck child is asleep and used
    little CPU, a starved one is runnable, a slow one used a lot."""
    ticks = os.sysconf("SC_CLK_TCK")
    parts = []
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            parts.append(f"{name} gone")
            continue
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        parts.append(f"{name} state {fields[0]} cpu {cpu:.1f}s")
    return ", ".join(parts)


def _wait_job(client: httpx.Client, job_id: str, token: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        job = response.json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {JOB_TIMEOUT:g}s")


def _stop(devstack: subprocess.Popen[bytes], log: Path) -> None:
    """Last resort after a failure: leave no process of the devstack behind."""
    if devstack.poll() is None:
        devstack.send_signal(signal.SIGINT)
        try:
            devstack.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            devstack.kill()
            devstack.wait()
    for pid in _child_pids(log.read_text()).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.integration
def test_embedded_devstack_runs_a_fetch_and_stops_cleanly(tmp_path: Path, body_server: str) -> None:
    data_dir = tmp_path / "sous"
    port = _free_port()
    log = tmp_path / "devstack.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "SOUS_SMTP_HOST"},
        "SOUS_API_HOST": "127.0.0.1",
        "SOUS_API_PORT": str(port),
        "SOUS_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
    }
    command = [
        sys.executable,
        str(REPO / "scripts" / "devstack.py"),
        "--mode",
        "embedded",
        "--no-flower",
        "--data-dir",
        str(data_dir),
        "--mail-sink-port",
        str(_free_port()),
    ]
    with log.open("wb") as log_file:
        devstack = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_healthy(client, devstack, log)
            # As the README says: load the settings devstack chose, then create a key.
            created = subprocess.run(
                [
                    "bash",
                    "-c",
                    f"set -a; . {data_dir / 'env'}; set +a; sous keys create --tenant t",
                ],
                env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            token = created.stdout.strip().splitlines()[-1]

            submitted = client.post(
                "/v1/fetches",
                json={"url": f"{body_server}/file"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert submitted.status_code == 202, submitted.text
            job = _wait_job(client, submitted.json()["id"], token)

            # Email jobs go to the development mail sink, which logs each message.
            mailed = client.post(
                "/v1/emails",
                json={"to": ["dev@example.com"], "subject": "devstack mail", "text": "hi"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert mailed.status_code == 202, mailed.text
            mail_job = _wait_job(client, mailed.json()["id"], token)
        assert mail_job["state"] == "succeeded", mail_job

        assert job["state"] == "succeeded", job
        assert job["result"]["status_code"] == 200
        assert job["result"]["sha256"] == hashlib.sha256(BODY).hexdigest()

        devstack.send_signal(signal.SIGINT)
        assert devstack.wait(STOP_TIMEOUT) == 0
        output = log.read_text()
        assert "Sous devstack: embedded mode" in output
        names = {"api", "worker-fast", "worker-heavy", "scheduler", "mail-sink"}
        for name in names:
            assert re.search(rf"^{re.escape(name)} +\| \S", output, re.MULTILINE), name
        assert re.search(r"mail-sink +\| mail #1: .*dev@example.com.*devstack mail", output)
        pids = _child_pids(output)
        assert set(pids) == names
        assert [name for name, pid in pids.items() if _group_exists(pid)] == []
    finally:
        _stop(devstack, log)
