"""A transcode whose outcome was not recorded before its worker died is not failed on rerun."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sous_core import storage
from sous_core.job_runner import JobContext
from sous_core.settings import get_settings
from sous_worker_heavy.transcode_job import run_transcode

UPLOAD = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOUS_STORAGE_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def context(result: dict | None) -> JobContext:
    params = {
        "source": {"upload": UPLOAD, "filename": "clip.mp4", "size_bytes": 10},
        "options": {"preset": "mp4-h264-720p"},
    }
    return JobContext(
        job_id=uuid.uuid4(), kind="transcode", params=params, attempt=2, result=result
    )


def test_an_earlier_attempts_recorded_output_is_the_result(storage_dir: Path) -> None:
    # The first attempt transcoded, put the output in place, recorded it, dropped the
    # upload, and died before its outcome was written; the redelivery finds no input.
    recorded = {"output": {"kind": "file", "filename": "output.mp4", "size_bytes": 1234}}
    upload = storage.upload_path(storage_dir, UPLOAD)
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"left over")  # or still there, if it died before dropping it
    assert run_transcode(context(recorded)) == recorded
    assert not upload.exists()
    assert run_transcode(context(recorded)) == recorded  # and again, with the upload gone


def test_without_a_recorded_output_a_missing_upload_fails_the_job(storage_dir: Path) -> None:
    from sous_core.errors import PermanentJobError

    with pytest.raises(PermanentJobError) as failed:
        run_transcode(context(None))
    assert failed.value.code == "input_missing"
