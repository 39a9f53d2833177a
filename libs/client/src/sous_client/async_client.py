"""``AsyncSous``: the asyncio client of the Sous HTTP API, method for method like ``Sous``.

::

    from sous_client import AsyncSous

    async with AsyncSous("http://127.0.0.1:8000", api_key="sk_...") as sous:
        job = await sous.submit_transcode("clip.mp4", preset="mp4-h264-720p")
        job = await sous.wait(job, timeout=600)
        await sous.download(job, "clip-720p.mp4")
        async for recent in sous.list(state="failed"):
            print(recent.id, recent.error)

Uploads read the file in 256 KiB chunks on the event loop's thread, as local disk reads.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from sous_client import protocol
from sous_client.errors import (
    ConnectionFailed,
    EventsUnavailable,
    SousError,
    error_from_response,
)
from sous_client.events import EventDecoder
from sous_client.models import Job, JobState, MissedPolicy, Page, Preset, Schedule, ScheduleRun
from sous_client.protocol import Call, JobRef, ProgressCallback, RetryPolicy

ModelT = TypeVar("ModelT", bound=BaseModel)
JobCallback = Callable[[Job], None]


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class AsyncSous:
    """The asyncio twin of :class:`~sous_client.Sous`: the same methods, awaited.

    ``base_url`` and ``api_key`` default to the ``SOUS_URL`` and ``SOUS_API_KEY``
    environment variables. ``timeout`` applies to each connect, send and read;
    ``retries`` is how often a request is repeated after a 503, a 429 or a broken
    connection (see :class:`~sous_client.protocol.RetryPolicy`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = protocol.DEFAULT_TIMEOUT,
        retries: int | RetryPolicy = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("SOUS_URL") or protocol.DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("SOUS_API_KEY")
        self.timeout = protocol.make_timeout(timeout)
        self.retry_policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=protocol.client_headers(api_key),
            timeout=self.timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncSous:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- sending -------------------------------------------------------------------------

    async def _send(
        self,
        call: Call,
        *,
        content: Callable[[], Iterator[bytes]] | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """The answer to ``call``, repeated as the retry policy says; errors raised typed.

        ``content`` makes a fresh body for each attempt. With ``stream`` the body of a
        successful answer is left unread (the caller closes the response).
        """
        attempt = 0
        while True:
            request = self._http.build_request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers=dict(call.headers),
                content=_async_chunks(content()) if content is not None else None,
                timeout=timeout or self.timeout,
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self.retry_policy.after_transport_error(attempt, exc, call.idempotent)
                if delay is None:
                    raise protocol.connection_failed(self.base_url, exc) from exc
            else:
                if response.status_code < 400:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                error = error_from_response(
                    response.status_code, response.headers, response.content
                )
                delay = self.retry_policy.after_response(attempt, error, call.idempotent)
                if delay is None:
                    raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def _model(self, model: type[ModelT], call: Call) -> ModelT:
        return model.model_validate_json((await self._send(call)).content)

    async def _pages(
        self, model: type[ModelT], make_call: Callable[[str | None], Call]
    ) -> AsyncIterator[ModelT]:
        cursor: str | None = None
        while True:
            response = await self._send(make_call(cursor))
            page = Page[model].model_validate_json(response.content)  # type: ignore[valid-type]
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- submitting ----------------------------------------------------------------------

    async def submit_fetch(
        self,
        url: str,
        *,
        store_body: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Fetch ``url`` in the background; ``store_body`` keeps the body for ``download``."""
        call = protocol.submit_fetch(url, store_body, callback_url, idempotency_key)
        return await self._model(Job, call)

    async def submit_fetches(
        self,
        urls: Sequence[str],
        *,
        store_body: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Fetch many URLs in parallel as one batch job (a child job per URL)."""
        call = protocol.submit_fetches(urls, store_body, callback_url, idempotency_key)
        return await self._model(Job, call)

    async def submit_email(
        self,
        to: str | Sequence[str],
        subject: str,
        *,
        text: str | None = None,
        html: str | None = None,
        cc: str | Sequence[str] = (),
        bcc: str | Sequence[str] = (),
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Send an email (``text``, ``html`` or both); it is sent at most once."""
        call = protocol.submit_email(
            to,
            subject,
            text=text,
            html=html,
            cc=cc,
            bcc=bcc,
            reply_to=reply_to,
            headers=headers,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
        )
        return await self._model(Job, call)

    async def submit_transcode(
        self,
        source: str | os.PathLike[str],
        *,
        preset: str,
        thumbnail_at: float | None = None,
        start: float | None = None,
        duration: float | None = None,
        callback_url: str | None = None,
        on_upload_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Transcode a local file (streamed up, never read whole into memory) or an
        ``http(s)://`` URL the worker downloads. ``on_upload_progress(sent, total)`` is
        called as the file's bytes go out."""
        options = protocol.transcode_options(preset, thumbnail_at, start, duration)
        if protocol.is_url(source):
            call = protocol.submit_transcode_url(
                str(source), options, callback_url, idempotency_key
            )
            return await self._model(Job, call)
        form = protocol.upload_form(source, options, callback_url)
        call = protocol.submit_transcode_upload(form, idempotency_key)
        response = await self._send(call, content=lambda: form.chunks(on_upload_progress))
        return Job.model_validate_json(response.content)

    # -- jobs ----------------------------------------------------------------------------

    async def get(self, job: JobRef) -> Job:
        """The job as it is now."""
        return await self._model(Job, protocol.get_job(job))

    def list(
        self,
        *,
        kind: str | None = None,
        state: JobState | str | None = None,
        parent_id: JobRef | None = None,
        schedule_id: uuid.UUID | str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first, fetched a page at a time as it is iterated."""
        return self._pages(
            Job,
            lambda cursor: protocol.list_jobs(
                kind=kind,
                state=state,
                parent_id=parent_id,
                schedule_id=schedule_id,
                page_size=page_size,
                cursor=cursor,
            ),
        )

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a job: a queued one never runs, a running one is asked to stop.

        Raises :class:`~sous_client.errors.Conflict` when the job already finished.
        """
        return await self._model(Job, protocol.cancel_job(job))

    async def presets(self) -> Sequence[Preset]:
        """The renditions ``submit_transcode(preset=...)`` may name."""
        return (await self._model(Page[Preset], protocol.list_presets())).items

    async def events(
        self, job: JobRef, *, timeout: httpx.Timeout | None = None
    ) -> AsyncIterator[Job]:
        """The job at once, then at each change of state or progress, from its event
        stream, until it ends. Raises :class:`~sous_client.errors.EventsUnavailable`
        where the server offers no stream (``wait`` then polls instead)."""
        try:
            response = await self._send(protocol.events_call(job), stream=True, timeout=timeout)
        except SousError as exc:
            raise (protocol.events_refusal(exc) or exc) from None
        try:
            protocol.check_event_stream(response)
            decoder = EventDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                update = protocol.job_from_event(event) if event is not None else None
                if update is not None:
                    yield update
        finally:
            await response.aclose()

    async def wait(
        self,
        job: JobRef,
        timeout: float | None = None,
        *,
        on_progress: JobCallback | None = None,
    ) -> Job:
        """Block until the job succeeds, fails or is cancelled; return it as it ended.

        Follows the job's event stream (reconnecting if it breaks), or polls with a
        growing interval where the server has no stream. ``on_progress(job)`` is called
        with each change. Raises :class:`~sous_client.errors.WaitTimeout` after
        ``timeout`` seconds (None: no limit); the job keeps running.
        """
        ref = protocol.job_id(job)
        clock = protocol.WaitClock(timeout)
        last: Job | None = job if isinstance(job, Job) else None
        failures = 0
        while failures < protocol.EVENTS_MAX_FAILURES:
            if clock.expired():
                raise clock.timed_out(last, ref)
            try:
                async for update in self.events(ref, timeout=clock.events_timeout(self.timeout)):
                    failures = 0
                    last = update
                    if on_progress is not None:
                        on_progress(update)
                    if update.is_terminal:
                        return update
                    if clock.expired():
                        raise clock.timed_out(last, ref)
            except EventsUnavailable:
                break
            except (httpx.TransportError, ConnectionFailed):
                pass  # A broken stream: reconnect after a pause, or poll after a few.
            failures += 1
            await asyncio.sleep(clock.next_poll())
        return await self._poll(ref, clock, last, on_progress)

    async def _poll(
        self, ref: str, clock: protocol.WaitClock, last: Job | None, on_progress: JobCallback | None
    ) -> Job:
        clock.reset_polls()
        while True:
            if clock.expired():
                raise clock.timed_out(last, ref)
            current = await self.get(ref)
            if on_progress is not None and current != last:
                on_progress(current)
            last = current
            if current.is_terminal:
                return current
            await asyncio.sleep(clock.next_poll())

    async def download(
        self,
        job: JobRef,
        dest: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream the job's output to ``dest`` (a file, or a folder to name it in); returns
        the path written. The bytes go to a temporary file renamed over ``dest`` at the end."""
        ref = protocol.job_id(job)
        target = protocol.DownloadTarget(dest, ref)
        response = await self._send(Call("GET", protocol.output_path(ref)), stream=True)
        try:
            total = protocol.content_length(response)
            handle = target.open(response.headers.get("content-disposition"))
            received = 0
            if on_progress is not None:
                on_progress(0, total)
            async for chunk in response.aiter_bytes(protocol.CHUNK_BYTES):
                handle.write(chunk)
                received += len(chunk)
                if on_progress is not None:
                    on_progress(received, total)
            return target.commit()
        except httpx.TransportError as exc:
            raise protocol.connection_failed(self.base_url, exc) from exc
        finally:
            target.discard()
            await response.aclose()

    # -- schedules -----------------------------------------------------------------------

    async def create_schedule(
        self,
        cron: str,
        job: Mapping[str, Any],
        *,
        name: str = "",
        timezone: str = "UTC",
        enabled: bool = True,
        missed_policy: MissedPolicy | str = MissedPolicy.SKIP,
    ) -> Schedule:
        """Submit ``job`` (``{"kind": "fetch" | "email", ...}``) at every tick of ``cron``."""
        call = protocol.create_schedule(
            cron, job, name=name, timezone=timezone, enabled=enabled, missed_policy=missed_policy
        )
        return await self._model(Schedule, call)

    async def get_schedule(self, schedule: Schedule | uuid.UUID | str) -> Schedule:
        return await self._model(Schedule, Call("GET", protocol.schedule_path(schedule)))

    def list_schedules(self, *, page_size: int = 100) -> AsyncIterator[Schedule]:
        """Every schedule of the tenant, newest first."""
        return self._pages(Schedule, lambda cursor: protocol.list_schedules(page_size, cursor))

    async def update_schedule(
        self, schedule: Schedule | uuid.UUID | str, **changes: Any
    ) -> Schedule:
        """Change some fields: ``update_schedule(s, enabled=False, cron="0 4 * * *")``."""
        return await self._model(Schedule, protocol.update_schedule(schedule, changes))

    async def delete_schedule(self, schedule: Schedule | uuid.UUID | str) -> None:
        """Delete a schedule and its runs; the jobs it created stay."""
        await self._send(Call("DELETE", protocol.schedule_path(schedule)))

    def schedule_runs(
        self, schedule: Schedule | uuid.UUID | str, *, page_size: int = 100
    ) -> AsyncIterator[ScheduleRun]:
        """The schedule's ticks, latest first: the job each submitted, or why none."""
        return self._pages(
            ScheduleRun,
            lambda cursor: protocol.list_schedule_runs(schedule, page_size, cursor),
        )
