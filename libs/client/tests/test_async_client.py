"""``AsyncSous`` against a real installation: the same operations as ``Sous``, awaited."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from sous_client import AsyncSous, Conflict, JobState, NotFound, Unauthorized, ValidationError
from support.sinks import SmtpSink
from support.stack import OK_BODY, Api, Origin

pytestmark = pytest.mark.integration


def test_the_async_client_submits_follows_lists_and_downloads(
    api: Api, tenant_key: str, origin: Origin, tiny_clip: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with AsyncSous(api.url, tenant_key) as sous:
            fetch, batch, transcode = await asyncio.gather(
                sous.submit_fetch(f"{origin.url}/ok", store_body=True),
                sous.submit_fetches([f"{origin.url}/ok?a", f"{origin.url}/status/404"]),
                sous.submit_transcode(tiny_clip, preset="mp4-h264-480p", thumbnail_at=0.5),
            )
            updates: list[int] = []
            done = await sous.wait(
                transcode, timeout=60, on_progress=lambda j: updates.append(j.progress)
            )
            assert done.state is JobState.SUCCEEDED, done.error
            assert updates[-1] == 100
            assert (await sous.wait(batch, timeout=60)).result["failed"] == 1  # type: ignore[index]
            fetched = await sous.wait(fetch, timeout=60)

            path = await sous.download(fetched, tmp_path / "body.txt")
            assert path.read_bytes() == OK_BODY
            video = await sous.download(done, tmp_path)
            assert video.stat().st_size == done.result["output"]["size_bytes"]  # type: ignore[index]

            listed = [job.id async for job in sous.list(page_size=1)]
            assert sorted(map(str, listed)) == sorted(
                str(job.id) for job in (fetch, batch, transcode)
            )
            children = [job async for job in sous.list(parent_id=batch.id)]
            assert len(children) == 2
            assert (await sous.get(fetch.id)).state is JobState.SUCCEEDED
            with pytest.raises(Conflict):
                await sous.cancel(fetch)
            assert any(preset.name == "hls-720p" for preset in await sous.presets())

    asyncio.run(scenario())


def test_the_async_client_sends_email_and_manages_schedules(
    api: Api, tenant_key: str, mail_sink: SmtpSink
) -> None:
    to = f"async-{uuid.uuid4().hex[:8]}@example.com"

    async def scenario() -> None:
        async with AsyncSous(api.url, tenant_key) as sous:
            job = await sous.submit_email(to, "Async hello", text="Hi")
            assert (await sous.wait(job, timeout=60)).state is JobState.SUCCEEDED

            schedule = await sous.create_schedule(
                "@daily", {"kind": "email", "to": [to], "subject": "Daily", "text": "Hi"}
            )
            updated = await sous.update_schedule(schedule.id, timezone="Asia/Tokyo")
            assert updated.timezone == "Asia/Tokyo"
            assert [s.id async for s in sous.list_schedules()] == [schedule.id]
            assert [run async for run in sous.schedule_runs(schedule)] == []
            await sous.delete_schedule(schedule)
            with pytest.raises(NotFound):
                await sous.get_schedule(schedule.id)
            with pytest.raises(ValidationError) as invalid:
                await sous.create_schedule("0 3 * * *", {"kind": "fetch"})
            assert invalid.value.errors
        async with AsyncSous(api.url, "sous_wrong") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.get(job.id)

    asyncio.run(scenario())
    assert len(mail_sink.to(to)) == 1


def test_the_async_client_retries_a_submission_after_a_dropped_connection(
    dropping_proxy, api: Api, tenant_key: str, origin: Origin
) -> None:
    async def scenario() -> None:
        async with AsyncSous(dropping_proxy.url, tenant_key) as flaky:
            job = await flaky.submit_fetch(f"{origin.url}/ok")
        async with AsyncSous(api.url, tenant_key) as direct:
            assert [listed.id async for listed in direct.list()] == [job.id]

    asyncio.run(scenario())
    assert (dropping_proxy.dropped, dropping_proxy.connections) == (1, 2)
