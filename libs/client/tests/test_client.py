"""``Sous`` against a real installation: every method through HTTP, real workers, real faults."""

from __future__ import annotations

import http.server
import itertools
import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from sous_client import (
    Conflict,
    ConnectionFailed,
    EventsUnavailable,
    Job,
    JobState,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Sous,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)
from sous_core import apikeys, quotas
from sous_core.db.engine import make_engine
from support.sinks import SmtpSink
from support.stack import OK_BODY, Api, LocalHttpServer, Origin, Stack, wait_until

pytestmark = pytest.mark.integration


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def test_a_fetch_is_followed_over_its_event_stream_and_its_body_downloaded(
    sous: Sous, origin: Origin, tmp_path: Path
) -> None:
    job = sous.submit_fetch(f"{origin.url}/ok", store_body=True)
    assert job.kind == "fetch"
    assert job.state in {JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED}
    seen: list[JobState] = []
    done = sous.wait(job, timeout=60, on_progress=lambda update: seen.append(update.state))
    assert done.state is JobState.SUCCEEDED, done.error
    assert seen[-1] is JobState.SUCCEEDED
    assert done.result is not None
    assert done.result["status_code"] == 200
    assert sous.get(job.id) == done

    received: list[tuple[int, int | None]] = []
    path = sous.download(done, tmp_path, on_progress=lambda n, total: received.append((n, total)))
    assert path.parent == tmp_path
    assert path.read_bytes() == OK_BODY
    assert received[-1] == (len(OK_BODY), len(OK_BODY))
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left"


def test_a_batch_and_its_children_are_listed_across_pages(sous: Sous, origin: Origin) -> None:
    urls = [f"{origin.url}/ok?n={n}" for n in range(5)]
    batch = sous.submit_fetches(urls)
    assert batch.kind == "fetch_batch"
    done = sous.wait(batch, timeout=60)
    assert done.state is JobState.SUCCEEDED
    assert done.batch is not None
    assert (done.batch.total, done.batch.finished) == (5, 5)

    children = list(sous.list(parent_id=batch, page_size=2))
    assert len(children) == 5
    assert len({child.id for child in children}) == 5
    assert sorted(child.params["url"] for child in children) == sorted(urls)
    assert [child.created_at for child in children] == sorted(
        (child.created_at for child in children), reverse=True
    )
    assert [job.id for job in sous.list()] == [batch.id], "children stay out of the plain list"
    assert list(sous.list(state="failed")) == []


def test_an_email_reaches_the_smtp_server(sous: Sous, mail_sink: SmtpSink) -> None:
    to = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    job = sous.submit_email(
        f"Ada Lovelace <{to}>",
        "From the Python client",
        text="Hello Ada!",
        html="<p>Hello <b>Ada</b>!</p>",
        cc=["grace@example.com"],
        bcc="audit@example.com",
        reply_to="support@example.com",
        headers={"X-Campaign": "client"},
    )
    assert sous.wait(job, timeout=60).state is JobState.SUCCEEDED
    [delivered] = mail_sink.to(to)
    assert set(delivered.rcpt_tos) == {to, "grace@example.com", "audit@example.com"}
    message = delivered.message
    assert message["Subject"] == "From the Python client"
    assert message["Reply-To"] == "support@example.com"
    assert message["X-Campaign"] == "client"
    assert "Bcc" not in message


def test_wait_on_a_real_transcode_sees_its_progress_rise(
    sous: Sous, long_clip: Path, tmp_path: Path
) -> None:
    sent: list[tuple[int, int | None]] = []
    job = sous.submit_transcode(
        long_clip,
        preset="mp4-h264-480p",
        thumbnail_at=1,
        on_upload_progress=lambda n, total: sent.append((n, total)),
    )
    size = long_clip.stat().st_size
    assert sent[0] == (0, size)
    assert sent[-1] == (size, size)
    assert [n for n, _ in sent] == sorted(n for n, _ in sent)
    assert job.params["source"]["size_bytes"] == size
    assert job.params["source"]["filename"] == "long.mp4"

    updates = []
    done = sous.wait(job, timeout=120, on_progress=updates.append)
    assert done.state is JobState.SUCCEEDED, done.error
    progress = [update.progress for update in updates]
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert [p for p in progress if 0 < p < 100], f"no progress seen between 0 and 100: {progress}"
    assert any(update.eta_at is not None for update in updates if update.state == "running")

    out = sous.download(done, tmp_path / "nested" / "out.mp4")
    assert out == tmp_path / "nested" / "out.mp4"
    video = next(s for s in probe(out)["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["height"]) == ("h264", 480)


def test_a_transcode_of_a_url_is_downloaded_by_the_worker(
    sous: Sous, tiny_clip: Path, tmp_path: Path
) -> None:
    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tiny_clip.parent), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *_args: object) -> None:
            pass

    server = LocalHttpServer(Files)
    try:
        job = sous.submit_transcode(f"{server.url}/{tiny_clip.name}", preset="audio-aac")
        assert job.params["source"] == {"url": f"{server.url}/{tiny_clip.name}"}
        done = sous.wait(job, timeout=60)
    finally:
        server.close()
    assert done.state is JobState.SUCCEEDED, done.error
    [stream] = probe(sous.download(done, tmp_path / "tone.m4a"))["streams"]
    assert stream["codec_name"] == "aac"


class NoEventsProxy(http.server.BaseHTTPRequestHandler):
    """Passes GETs to the API, except event streams: a 404 like an older API's, or a proxy
    that refuses them."""

    upstream = ""

    def do_GET(self) -> None:
        if self.path.endswith("/events"):
            status, body, media_type = 404, b'{"detail": "Not Found"}', "application/json"
        else:
            answer = httpx.get(self.upstream + self.path, headers=dict(self.headers), timeout=10)
            status, body = answer.status_code, answer.content
            media_type = answer.headers["content-type"]
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_wait_polls_where_the_server_offers_no_event_stream(
    sous: Sous, api: Api, tenant_key: str, origin: Origin
) -> None:
    job = sous.submit_fetch(f"{origin.url}/drip/1.5")
    handler = type("Proxy", (NoEventsProxy,), {"upstream": api.url})
    proxy = LocalHttpServer(handler)
    try:
        with Sous(proxy.url, tenant_key) as polling:
            with pytest.raises(EventsUnavailable):
                next(polling.events(job))
            updates: list[Job] = []
            done = polling.wait(job, timeout=60, on_progress=updates.append)
    finally:
        proxy.close()
    assert done.state is JobState.SUCCEEDED
    assert updates[-1] == done
    assert all(a != b for a, b in itertools.pairwise(updates)), "only changes"


def test_cancel_and_wait_timeout(sous: Sous, origin: Origin) -> None:
    job = sous.submit_fetch(f"{origin.url}/drip/20")
    with pytest.raises(WaitTimeout) as timed_out:
        sous.wait(job, timeout=0.5)
    assert timed_out.value.job.state in {JobState.QUEUED, JobState.RUNNING}
    assert timed_out.value.code == "wait_timeout"

    cancelled = sous.cancel(job)
    assert cancelled.cancel_requested
    assert sous.wait(job, timeout=30).state is JobState.CANCELLED
    with pytest.raises(Conflict) as conflict:
        sous.cancel(job)
    assert conflict.value.code == "job_finished"


def test_missing_jobs_bad_keys_and_bad_input_raise_typed_errors(api: Api, sous: Sous) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as not_found:
        sous.get(missing)
    assert (not_found.value.status, not_found.value.code) == (404, "job_not_found")
    assert str(missing) in not_found.value.message

    with Sous(api.url, "sous_not_a_key") as stranger, pytest.raises(Unauthorized) as refused:
        stranger.get(missing)
    assert refused.value.code == "unauthorized"

    with pytest.raises(ValidationError) as invalid:
        sous.submit_email(["not an address"], "Hi", text="x")
    assert invalid.value.status == 422
    assert [error.field for error in invalid.value.errors] == ["to.0"]
    assert "not a valid email address" in invalid.value.errors[0].message

    with pytest.raises(ValidationError) as bad_preset:
        sous.submit_transcode("https://example.com/a.mp4", preset="vhs")
    assert bad_preset.value.errors[0].field == "options.preset"

    with pytest.raises(NotFound) as no_output:
        sous.download(sous.submit_fetch("https://example.com/"), ".")
    assert no_output.value.code == "no_output"


def test_an_upload_past_the_servers_limit_is_payload_too_large(
    client_stack, tenant_key: str, tiny_clip: Path
) -> None:
    with Sous(client_stack.capped_api.url, tenant_key) as client:
        with pytest.raises(PayloadTooLarge) as too_large:
            client.submit_transcode(tiny_clip, preset="mp4-h264-480p")
        assert list(client.list()) == []
    assert too_large.value.code == "upload_too_large"
    assert "1024 bytes" in too_large.value.message


def test_a_spent_quota_is_quota_exceeded_with_retry_after(
    sous_stack: Stack, api: Api, origin: Origin
) -> None:
    tenant = f"quota-{uuid.uuid4().hex[:6]}"
    key = sous_stack.create_key(tenant)
    engine = make_engine(sous_stack.database_url())
    with Session(engine) as session, session.begin():
        tenant_row, _ = apikeys.get_or_create_tenant(session, tenant)
        quotas.set_quota(session, tenant_row.id, "jobs:fetch", 1)
    engine.dispose()
    with Sous(api.url, key) as client:
        client.submit_fetch(f"{origin.url}/ok")
        with pytest.raises(QuotaExceeded) as spent:
            client.submit_fetch(f"{origin.url}/ok")
        assert len(list(client.list())) == 1
    assert (spent.value.status, spent.value.code) == (429, "quota_exceeded")
    assert "Daily quota for jobs:fetch" in spent.value.message
    assert spent.value.retry_after is not None
    assert 1 <= spent.value.retry_after <= 86400


def test_a_submission_retried_after_a_dropped_connection_makes_one_job(
    dropping_proxy, tenant_key: str, api: Api, origin: Origin
) -> None:
    with Sous(dropping_proxy.url, tenant_key, retries=2) as flaky:
        job = flaky.submit_fetch(f"{origin.url}/ok")
    assert dropping_proxy.dropped == 1, "the first answer never reached the client"
    assert dropping_proxy.connections == 2
    with Sous(api.url, tenant_key) as direct:
        assert [listed.id for listed in direct.list()] == [job.id]


def test_an_upload_retried_after_a_dropped_connection_makes_one_job(
    dropping_proxy, sous_stack: Stack, tenant_key: str, api: Api, tiny_clip: Path
) -> None:
    sent: list[int] = []
    with Sous(dropping_proxy.url, tenant_key, retries=2) as flaky:
        job = flaky.submit_transcode(
            tiny_clip, preset="mp4-h264-480p", on_upload_progress=lambda n, _total: sent.append(n)
        )
    assert dropping_proxy.dropped == 1
    assert sent.count(tiny_clip.stat().st_size) == 2, "the file was sent whole twice"
    with Sous(api.url, tenant_key) as direct:
        assert [listed.id for listed in direct.list()] == [job.id]
        assert direct.wait(job, timeout=60).state is JobState.SUCCEEDED
    uploads = Path(sous_stack.env["SOUS_STORAGE_DIR"]) / "uploads"
    assert job.params["source"]["upload"] not in {path.name for path in uploads.iterdir()}
    wait_until(
        lambda: not [p for p in uploads.iterdir() if not p.name.startswith(".")],
        10,
        "the second copy of the upload to be deleted",
    )


def test_a_schedule_is_not_created_twice_after_a_dropped_connection(
    dropping_proxy, tenant_key: str, api: Api
) -> None:
    with Sous(dropping_proxy.url, tenant_key, retries=2) as flaky, pytest.raises(ConnectionFailed):
        flaky.create_schedule("0 3 * * *", {"kind": "fetch", "url": "https://example.com/"})
    assert dropping_proxy.connections == 1, "a create without an idempotency key is not repeated"
    with Sous(api.url, tenant_key) as direct:
        assert len(list(direct.list_schedules())) == 1


def test_schedules_crud(sous: Sous) -> None:
    created = sous.create_schedule(
        "0 3 * * *",
        {"kind": "fetch", "url": "https://example.com/feed"},
        name="nightly feed",
        timezone="Europe/Paris",
    )
    assert created.enabled
    assert created.next_fire_at is not None
    assert sous.get_schedule(created.id) == created
    assert [schedule.id for schedule in sous.list_schedules(page_size=1)] == [created.id]

    paused = sous.update_schedule(created, enabled=False, name="paused feed")
    assert (paused.enabled, paused.name, paused.next_fire_at) == (False, "paused feed", None)
    assert list(sous.schedule_runs(created)) == []

    with pytest.raises(ValidationError) as invalid:
        sous.update_schedule(created, cron="every day")
    assert [error.field for error in invalid.value.errors] == ["cron"]

    sous.delete_schedule(created)
    with pytest.raises(NotFound) as gone:
        sous.get_schedule(created.id)
    assert gone.value.code == "schedule_not_found"


def test_presets(sous: Sous) -> None:
    presets = {preset.name: preset for preset in sous.presets()}
    assert presets["mp4-h264-720p"].max_height == 720
    assert presets["audio-aac"].video_codec is None
