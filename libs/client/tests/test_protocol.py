"""What both clients share: retry decisions, upload bodies, download files, wait deadlines."""

from __future__ import annotations

import email
import email.policy
import os
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sous_client import protocol
from sous_client.errors import QuotaExceeded, RateLimited, ServerError, SousError, Unavailable
from sous_client.models import Job
from sous_client.protocol import (
    CHUNK_BYTES,
    DownloadTarget,
    RetryPolicy,
    UploadForm,
    WaitClock,
    filename_from_disposition,
)

POLICY = RetryPolicy(retries=3, backoff=0.5, max_backoff=4.0, max_retry_after=30)
REQUEST = httpx.Request("POST", "http://sous.test/v1/fetches")


def error(cls: type[SousError], status: int, retry_after: float | None = None) -> SousError:
    return cls("refused", status=status, retry_after=retry_after)


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    assert [POLICY.backoff_delay(attempt, rng=lambda: 1.0) for attempt in range(5)] == [
        0.5, 1.0, 2.0, 4.0, 4.0,
    ]  # fmt: skip
    assert POLICY.backoff_delay(3, rng=lambda: 0.0) == 0.0
    assert POLICY.backoff_delay(1, rng=lambda: 0.25) == 0.25


def test_503_and_429_are_retried_honouring_retry_after() -> None:
    assert POLICY.after_response(0, error(Unavailable, 503, retry_after=5), False) == 5
    assert POLICY.after_response(0, error(RateLimited, 429), False, rng=lambda: 1.0) == 0.5
    assert POLICY.after_response(2, error(Unavailable, 503), True, rng=lambda: 1.0) == 2.0
    assert POLICY.after_response(3, error(Unavailable, 503), True) is None, "retries spent"


def test_a_retry_after_longer_than_the_limit_and_a_spent_quota_are_not_waited_for() -> None:
    assert POLICY.after_response(0, error(RateLimited, 429, retry_after=31), True) is None
    assert POLICY.after_response(0, error(QuotaExceeded, 429, retry_after=1), True) is None


def test_proxy_gateway_errors_are_retried_only_for_idempotent_calls() -> None:
    assert POLICY.after_response(0, error(ServerError, 502), True, rng=lambda: 1.0) == 0.5
    assert POLICY.after_response(0, error(ServerError, 502), False) is None
    assert POLICY.after_response(0, error(ServerError, 500), True) is None
    assert POLICY.after_response(0, error(SousError, 422), True) is None


@pytest.mark.parametrize(
    ("exc", "idempotent", "retried"),
    [
        (httpx.ConnectError("refused", request=REQUEST), False, True),
        (httpx.ConnectTimeout("slow", request=REQUEST), False, True),
        (httpx.RemoteProtocolError("dropped", request=REQUEST), False, False),
        (httpx.RemoteProtocolError("dropped", request=REQUEST), True, True),
        (httpx.ReadTimeout("slow", request=REQUEST), False, False),
        (httpx.ReadTimeout("slow", request=REQUEST), True, True),
        (httpx.WriteError("broken", request=REQUEST), True, True),
    ],
)
def test_a_broken_connection_is_retried_when_nothing_was_sent_or_repeating_is_safe(
    exc: httpx.TransportError, idempotent: bool, retried: bool
) -> None:
    delay = POLICY.after_transport_error(0, exc, idempotent, rng=lambda: 1.0)
    assert (delay is not None) == retried
    assert POLICY.after_transport_error(3, exc, True) is None


def test_every_submission_gets_its_own_idempotency_key_unless_given_one() -> None:
    first = protocol.submit_fetch("https://example.com/", False, None, None)
    second = protocol.submit_fetch("https://example.com/", False, None, None)
    keys = {first.headers["Idempotency-Key"], second.headers["Idempotency-Key"]}
    assert len(keys) == 2
    assert all(uuid.UUID(key).version == 4 for key in keys)
    assert first.idempotent
    given = protocol.submit_email("a@example.com", "Hi", text="x", html=None, cc=(), bcc=(),
                                  reply_to=None, headers=None, callback_url=None,
                                  idempotency_key="welcome-1")  # fmt: skip
    assert given.headers["Idempotency-Key"] == "welcome-1"
    assert given.json == {"to": ["a@example.com"], "subject": "Hi", "text": "x"}
    assert not protocol.create_schedule(
        "@daily", {}, name="", timezone="UTC", enabled=True, missed_policy="skip"
    ).idempotent
    with pytest.raises(TypeError):
        protocol.submit_fetches("https://example.com/", False, None, None)


def test_an_upload_body_is_valid_multipart_sent_in_bounded_chunks(tmp_path: Path) -> None:
    video = tmp_path / 'my "clip".mp4'
    video.write_bytes(bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7))
    form = UploadForm(video, {"options": '{"preset":"audio-aac"}', "callback_url": "https://x/"})
    progress: list[tuple[int, int | None]] = []
    chunks = list(form.chunks(lambda sent, total: progress.append((sent, total))))
    body = b"".join(chunks)

    assert len(body) == form.content_length == int(form.headers["Content-Length"])
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES, "the file is never read whole"
    size = video.stat().st_size
    assert progress[0] == (0, size)
    assert progress[-1] == (size, size)
    assert len(progress) == 1 + -(-size // CHUNK_BYTES)

    head = f"Content-Type: {form.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    parts = {
        part.get_param("name", header="content-disposition"): part for part in message.iter_parts()
    }
    assert parts["options"].get_content().strip() == '{"preset":"audio-aac"}'
    assert parts["callback_url"].get_content().strip() == "https://x/"
    assert parts["file"].get_filename() == "my %22clip%22.mp4"
    assert parts["file"].get_payload(decode=True) == video.read_bytes()
    assert list(form.chunks()) == chunks, "each attempt sends the same body again"


def test_an_upload_of_a_missing_file_fails_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        UploadForm(tmp_path / "nope.mp4", {})


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="out.mp4"', "out.mp4"),
        ("attachment; filename=plain.txt", "plain.txt"),
        ("attachment; filename*=utf-8''caf%C3%A9.mp4", "café.mp4"),
        ("attachment; filename=\"x.mp4\"; filename*=utf-8''y.mp4", "y.mp4"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="..\\\\evil.sh"', "evil.sh"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ('attachment; filename=".."', None),
        ("attachment", None),
        (None, None),
    ],
)
def test_a_suggested_file_name_is_made_safe(header: str | None, name: str | None) -> None:
    assert filename_from_disposition(header) == name


def test_a_download_lands_whole_or_not_at_all(tmp_path: Path) -> None:
    target = DownloadTarget(tmp_path, "job-1")
    handle = target.open('attachment; filename="result.bin"')
    handle.write(b"half")
    assert not (tmp_path / "result.bin").exists()
    handle.write(b" and half")
    assert target.commit() == tmp_path / "result.bin"
    assert (tmp_path / "result.bin").read_bytes() == b"half and half"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "result.bin").stat().st_mode) == 0o666 & ~umask

    interrupted = DownloadTarget(tmp_path / "result.bin", "job-2")
    interrupted.open(None).write(b"partial")
    interrupted.discard()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.bin"]
    assert (tmp_path / "result.bin").read_bytes() == b"half and half", "the old file stays"

    unnamed = DownloadTarget(tmp_path, "job-3")
    unnamed.open(None)
    assert unnamed.commit() == tmp_path / "job-3.out"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_polls_back_off_and_never_sleep_past_the_deadline() -> None:
    clock = FakeClock()
    wait = WaitClock(timeout=4.0, poll_initial=0.5, poll_max=2.0, factor=2.0, clock=clock)
    assert [wait.next_poll() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    clock.now += 3.5
    assert wait.next_poll() == pytest.approx(0.5)
    assert not wait.expired()
    clock.now += 0.5
    assert wait.expired()
    wait.reset_polls()
    assert WaitClock(None, clock=clock).remaining() is None


def test_the_event_stream_read_timeout_ends_at_the_deadline() -> None:
    clock = FakeClock()
    base = httpx.Timeout(30.0, connect=5.0)
    assert WaitClock(None, clock=clock).events_timeout(base).read == protocol.EVENTS_READ_TIMEOUT
    wait = WaitClock(10.0, clock=clock)
    clock.now += 7
    timeout = wait.events_timeout(base)
    assert (timeout.read, timeout.connect) == (pytest.approx(3.0), 5.0)


def job(**fields: object) -> Job:
    return Job.model_validate(
        {"id": str(uuid.uuid4()), "kind": "transcode", "state": "running", "progress": 30,
         "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", **fields}
    )  # fmt: skip


def test_the_eta_comes_from_the_workers_estimate() -> None:
    now = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert protocol.eta_seconds(job(eta_at=now + timedelta(seconds=12)), now) == 12
    assert protocol.eta_seconds(job(eta_at=now - timedelta(seconds=1)), now) == 0
    assert protocol.eta_seconds(job(), now) is None
    assert protocol.eta_seconds(job(state="succeeded", eta_at=now), now) is None


def test_a_timed_out_wait_says_where_the_job_was() -> None:
    running = job()
    timeout = WaitClock(2.0).timed_out(running, str(running.id))
    assert timeout.job is running
    assert f"Job {running.id} did not finish within 2 s (still running at 30%)." == timeout.message


def test_jobs_are_named_by_id_in_any_form() -> None:
    running = job()
    assert protocol.job_id(running) == protocol.job_id(running.id) == str(running.id)
    assert protocol.job_id(str(running.id).upper()) == str(running.id)
    with pytest.raises(ValueError, match="badly formed"):
        protocol.job_id("../../etc")
    assert job(unknown_future_field=1).model_extra == {"unknown_future_field": 1}
