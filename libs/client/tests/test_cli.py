"""The ``sous-client`` command against a real installation, run in a pseudo-terminal."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sous_client import JobState, Sous, cli
from support.stack import OK_BODY, Api, Origin, free_port

pytestmark = pytest.mark.integration


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """``run(args, env)``: the command in this process (no terminal: no bars, plain text),
    talking to the real API like the installed command does, without its start-up time."""

    def run_command(args: list[str], env: dict[str, str]) -> Ran:
        for name in ("SOUS_URL", "SOUS_API_KEY"):
            monkeypatch.setenv(name, env[name])
        capsys.readouterr()
        status = cli.main(args)
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return run_command


def test_a_transcode_shows_upload_transcode_and_download_bars(
    terminal, cli_env: dict[str, str], long_clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    shell = terminal(
        [
            "submit",
            "transcode",
            str(long_clip),
            "--preset",
            "mp4-h264-480p",
            "--wait",
            "-o",
            str(out),
        ],
        cli_env,
    )
    status, _ = shell.finish()
    screen = shell.text
    assert status == 0, screen
    for label in ("uploading", "transcode", "downloading"):
        assert re.search(rf"{label} +│█+│ 100%", screen), f"no finished {label} bar:\n{screen}"
    assert re.search(r"transcode +│[█▏▎▍▌▋▊▉ ]+│ +[1-9]\d?%  .* ETA \d+:\d\d", screen), screen
    assert re.search(r"uploading .*MiB/s", screen)
    assert re.search(r"Job [0-9a-f-]{36} succeeded", screen)
    assert f"Saved {out}" in screen
    assert out.stat().st_size > 0


def test_json_output_is_one_parseable_document_while_bars_go_to_the_terminal(
    terminal, cli_env: dict[str, str], tiny_clip: Path, tmp_path: Path
) -> None:
    shell = terminal(
        ["--json", "submit", "transcode", str(tiny_clip), "--preset", "audio-aac", "--wait",
         "--output", str(tmp_path)],
        cli_env,
        stdout_pipe=True,
    )  # fmt: skip
    status, stdout = shell.finish()
    assert status == 0, shell.text
    job = json.loads(stdout)
    assert job["state"] == "succeeded"
    assert job["kind"] == "transcode"
    assert Path(job["output_path"]).parent == tmp_path
    assert Path(job["output_path"]).stat().st_size == job["result"]["output"]["size_bytes"]
    assert "uploading" in shell.text
    assert "{" not in shell.text, "JSON goes to stdout only"


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_resume(
    terminal, run, cli_env: dict[str, str], origin: Origin, api: Api, tmp_path: Path
) -> None:
    shell = terminal(
        ["submit", "fetch", f"{origin.url}/drip/5", "--wait", "-o", str(tmp_path / "body")],
        cli_env,
    )
    shell.read_until(r"fetch +│")
    shell.type(b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
    status, _ = shell.finish()
    assert status == 130, shell.text
    resume = re.search(
        r"Resume with:\r?\n  (sous-client jobs watch (\S+) --output \S+)", shell.text
    )
    assert resume, shell.text
    job_id = resume.group(2)
    with Sous(api.url, cli_env["SOUS_API_KEY"]) as sous:
        job = sous.get(job_id)
        assert job.state in {JobState.QUEUED, JobState.RUNNING}
        assert not job.cancel_requested

    resumed = run(resume.group(1).split()[1:], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Job {job_id} succeeded" in resumed.stdout
    assert len((tmp_path / "body").read_bytes()) == 200


def test_jobs_commands_in_text_and_json(
    run, cli_env: dict[str, str], origin: Origin, tmp_path: Path
) -> None:
    submitted = run(["submit", "fetch", f"{origin.url}/ok", "--store-body", "--json"], cli_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    watched = run(["jobs", "watch", job_id], cli_env)
    assert watched.returncode == 0
    assert f"Job {job_id} succeeded" in watched.stdout
    assert "HTTP 200" in watched.stdout
    assert f"job {job_id}: succeeded" in watched.stderr, "state changes are noted without bars"
    assert "│" not in watched.stderr, "no bars without a terminal"

    listed = run(["jobs", "list", "--json"], cli_env)
    assert [job["id"] for job in json.loads(listed.stdout)] == [job_id]
    table = run(["jobs", "list", "--state", "succeeded"], cli_env).stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "STATE", "PROGRESS", "CREATED"]
    assert table[1].split()[:4] == [job_id, "fetch", "succeeded", "100%"]

    shown = run(["jobs", "show", job_id], cli_env).stdout
    assert re.search(r"^state +succeeded \(100%\)$", shown, re.MULTILINE)

    downloaded = run(
        ["jobs", "download", job_id, "-o", str(tmp_path / "ok.txt"), "--json"], cli_env
    )
    assert json.loads(downloaded.stdout)["size_bytes"] == len(OK_BODY)
    assert (tmp_path / "ok.txt").read_bytes() == OK_BODY

    finished = run(["jobs", "cancel", job_id], cli_env)
    assert finished.returncode == 3
    assert "409 job_finished" in finished.stderr


def test_errors_have_their_exit_status_and_json_shape(run, cli_env: dict[str, str]) -> None:
    missing = str(uuid.uuid4())
    shown = run(["jobs", "show", missing, "--json"], cli_env)
    assert shown.returncode == 3
    assert json.loads(shown.stdout)["error"]["code"] == "job_not_found"

    invalid = run(["submit", "email", "--to", "nope", "--subject", "Hi", "--text", "x"], cli_env)
    assert invalid.returncode == 3
    assert "to.0: " in invalid.stderr

    stranger = run(["jobs", "list"], {**cli_env, "SOUS_API_KEY": "sous_wrong"})
    assert stranger.returncode == 3
    assert "401 unauthorized" in stranger.stderr
    keyless = run(["jobs", "list"], {**cli_env, "SOUS_API_KEY": ""})
    assert keyless.returncode == 3
    assert "set SOUS_API_KEY or pass --api-key" in keyless.stderr

    nowhere = run(["--url", f"http://127.0.0.1:{free_port()}", "presets", "--json"], cli_env)
    assert nowhere.returncode == 4
    assert json.loads(nowhere.stdout)["error"]["code"] == "connection_failed"

    watch_missing = run(["jobs", "watch", missing, "--timeout", "1"], cli_env)
    assert watch_missing.returncode == 3, "a missing job is an API error, not a timeout"
