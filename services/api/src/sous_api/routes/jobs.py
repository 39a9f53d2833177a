"""``/v1/jobs``: read, list and cancel a tenant's jobs; download their outputs."""

from __future__ import annotations

import io
import logging
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sous_api.deps import CeleryDep, PrincipalDep, run_db
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, ApiError, error_responses
from sous_api.queued_marks import QueuedMarker
from sous_api.schemas import JobList, JobResource
from sous_core import jobs, storage, webhooks
from sous_core.apikeys import Principal
from sous_core.db.models import Job
from sous_core.settings import get_settings
from sous_core.states import JobState
from sous_core.tasks import JobKind

logger = logging.getLogger("sous.api")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTHENTICATED_ROUTE_ERRORS)


def job_url(request: Request, job_id: uuid.UUID) -> str:
    base = get_settings().public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/v1/jobs/{job_id}"


async def job_accepted(
    request: Request, response: Response, job: JobResource, replayed: bool
) -> JobResource:
    """Mark a new job queued (its message is confirmed), then the headers of a 202:
    where to follow the job, and whether this was a replay."""
    if not replayed and job.state is JobState.PENDING:
        marker: QueuedMarker = request.app.state.queued_marker
        at, marked = await marker.mark(job.id)
        if marked:
            job = job.model_copy(
                update={"state": JobState.QUEUED, "queued_at": at, "updated_at": at}
            )
        else:  # a worker started it already: report it as it is now
            job = await run_db(_current, job.id)
    response.headers["Location"] = job_url(request, job.id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _current(session: Session, job_id: uuid.UUID) -> JobResource:
    return _resource(session, jobs.get_job(session, job_id))


def _tenant_job(session: Session, principal: Principal, job_id: uuid.UUID) -> Job:
    try:
        return jobs.get_job(session, job_id, tenant_id=principal.tenant_id)
    except jobs.JobNotFound:
        raise ApiError(404, "job_not_found", f"No job with id {job_id}.") from None


def _resource(session: Session, job: Job) -> JobResource:
    return JobResource.from_job(job, webhooks.deliveries_for(session, [job.id]).get(job.id))


def read_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    """The principal's job as clients see it, or a 404."""
    return _resource(session, _tenant_job(session, principal, job_id))


@router.get("/{job_id}", response_model=JobResource, responses=error_responses(404))
async def get_job(job_id: uuid.UUID, principal: PrincipalDep) -> JobResource:
    """A job's state, progress, timestamps, attempts, and result or error."""
    return await run_db(read_job, principal, job_id)


def _list_jobs(
    session: Session,
    principal: Principal,
    limit: int,
    cursor: str | None,
    kind: str | None,
    state: JobState | None,
    parent_id: uuid.UUID | None,
    schedule_id: uuid.UUID | None,
) -> JobList:
    try:
        page = jobs.list_jobs(
            session,
            principal.tenant_id,
            limit=limit,
            cursor=cursor,
            kind=kind,
            state=state,
            parent_id=parent_id,
            schedule_id=schedule_id,
        )
    except jobs.InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    deliveries = webhooks.deliveries_for(session, [job.id for job in page.jobs])
    return JobList(
        items=[JobResource.from_job(job, deliveries.get(job.id)) for job in page.jobs],
        next_cursor=page.next_cursor,
    )


@router.get("", response_model=JobList, responses=error_responses(400))
async def list_jobs(
    principal: PrincipalDep,
    kind: Annotated[str | None, Query(max_length=32, description="Only jobs of this kind.")] = None,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    parent_id: Annotated[
        uuid.UUID | None, Query(description="Only the jobs of this batch (default: no batch jobs).")
    ] = None,
    schedule_id: Annotated[
        uuid.UUID | None, Query(description="Only the jobs this schedule created.")
    ] = None,
) -> JobList:
    """The tenant's jobs, newest first; follow ``next_cursor`` for older ones.

    The jobs a batch fanned out into are listed only with ``parent_id``.
    """
    return await run_db(_list_jobs, principal, limit, cursor, kind, state, parent_id, schedule_id)


#: Headers of every stored file served: its bytes came from elsewhere, so a browser must
#: never run them as this API's page.
UNTRUSTED_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
HLS_CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}
#: Bytes read from a file at a time while zipping an HLS output.
ZIP_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredOutput:
    """A succeeded job's output: one file at ``path``, or HLS ``files`` in the ``path`` folder."""

    path: Path
    content_type: str
    filename: str
    hls_files: tuple[str, ...] = ()


def _output_gone(job_id: uuid.UUID) -> ApiError:
    return ApiError(410, "output_gone", f"The output of job {job_id} is no longer stored.")


def _succeeded_output(session: Session, principal: Principal, job_id: uuid.UUID) -> dict[str, Any]:
    job = _tenant_job(session, principal, job_id)
    output = (job.result or {}).get("output")
    if job.state != JobState.SUCCEEDED.value or not isinstance(output, dict):
        raise ApiError(
            404,
            "no_output",
            f"Job {job_id} has no stored output (it is {job.state}; fetches store their "
            'body only with "store_body": true).',
        )
    return output


def _hls_files(output: dict[str, Any]) -> tuple[str, ...]:
    """The HLS file names a result lists, plain names only (never a path)."""
    files = output.get("files") if output.get("kind") == "hls" else None
    if not isinstance(files, list):
        return ()
    return tuple(
        name
        for name in files
        if isinstance(name, str)
        and name
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
    )


def _stored_output(session: Session, principal: Principal, job_id: uuid.UUID) -> StoredOutput:
    output = _succeeded_output(session, principal, job_id)
    storage_dir = get_settings().storage_dir
    if output.get("kind") == "hls":
        folder = storage.hls_dir(storage_dir, job_id)
        names = _hls_files(output)
        if not names or not all((folder / name).is_file() for name in names):
            raise _output_gone(job_id)
        return StoredOutput(folder, "application/zip", f"{job_id}-hls.zip", names)
    path = storage.output_path(storage_dir, job_id)
    if not path.is_file():
        raise _output_gone(job_id)
    return StoredOutput(
        path,
        str(output.get("content_type") or "application/octet-stream"),
        str(output.get("filename") or f"{job_id}.out"),
    )


class _ZipSink(io.RawIOBase):
    """A stream zipfile writes into without seeking; ``take`` hands over what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(self._chunks[-1])

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(folder: Path, names: Sequence[str]) -> Iterator[bytes]:
    """A zip of ``names`` in ``folder``, made while it is sent (stored: video is compressed)."""
    sink = _ZipSink()
    with zipfile.ZipFile(sink, "w") as archive:
        for name in names:
            path = folder / name
            with (
                path.open("rb") as source,
                archive.open(zipfile.ZipInfo.from_file(path, name), "w") as entry,
            ):
                while chunk := source.read(ZIP_CHUNK_BYTES):
                    entry.write(chunk)
                    yield sink.take()
    yield sink.take()


@router.get(
    "/{job_id}/output",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/zip": {}}},
        **error_responses(404, 410),
    },
)
async def download_output(job_id: uuid.UUID, principal: PrincipalDep) -> Response:
    """The job's stored output, streamed: a fetched body, a transcoded file, or for an
    HLS transcode a zip of the playlist and its segments."""
    output = await run_db(_stored_output, principal, job_id)
    if output.hls_files:
        return StreamingResponse(
            zip_stream(output.path, output.hls_files),
            media_type=output.content_type,
            headers={
                **UNTRUSTED_FILE_HEADERS,
                "Content-Disposition": f'attachment; filename="{output.filename}"',
            },
        )
    return FileResponse(
        output.path,
        media_type=output.content_type,
        filename=output.filename,
        content_disposition_type="attachment",
        headers=UNTRUSTED_FILE_HEADERS,
    )


def _hls_file(session: Session, principal: Principal, job_id: uuid.UUID, name: str) -> Path:
    output = _succeeded_output(session, principal, job_id)
    if name not in _hls_files(output):
        raise ApiError(
            404,
            "no_such_file",
            f"The output of job {job_id} has no file named {name[:100]!r}; an HLS output "
            "lists its files in result.output.files.",
        )
    path = storage.hls_dir(get_settings().storage_dir, job_id) / name
    if not path.is_file():
        raise _output_gone(job_id)
    return path


@router.get(
    "/{job_id}/output/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {media_type: {} for media_type in HLS_CONTENT_TYPES.values()}},
        **error_responses(404, 410),
    },
)
async def download_output_file(job_id: uuid.UUID, name: str, principal: PrincipalDep) -> Response:
    """One file of an HLS output (``index.m3u8``, ``seg_000.ts``...), as listed in
    ``result.output.files``. The playlist names its segments relative to itself, so a
    player that sends the API key can play ``.../output/index.m3u8`` directly."""
    path = await run_db(_hls_file, principal, job_id, name)
    media_type = HLS_CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers=UNTRUSTED_FILE_HEADERS)


def _thumbnail_file(session: Session, principal: Principal, job_id: uuid.UUID) -> Path:
    job = _tenant_job(session, principal, job_id)
    if not isinstance((job.result or {}).get("thumbnail"), dict):
        raise ApiError(
            404,
            "no_thumbnail",
            f"Job {job_id} has no thumbnail (a transcode makes one when its options "
            "name thumbnail_at).",
        )
    path = storage.thumbnail_path(get_settings().storage_dir, job_id)
    if not path.is_file():
        raise _output_gone(job_id)
    return path


@router.get(
    "/{job_id}/thumbnail",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 410)},
)
async def download_thumbnail(job_id: uuid.UUID, principal: PrincipalDep) -> Response:
    """The JPEG thumbnail a transcode made (``options.thumbnail_at``)."""
    path = await run_db(_thumbnail_file, principal, job_id)
    return FileResponse(path, media_type="image/jpeg", headers=UNTRUSTED_FILE_HEADERS)


def _cancel_job(session: Session, principal: Principal, job_id: uuid.UUID) -> JobResource:
    job = _tenant_job(session, principal, job_id)
    if job.job_state.is_terminal:
        raise ApiError(409, "job_finished", f"The job already {job.state}; nothing to cancel.")
    job = jobs.request_cancel(session, job)
    session.commit()
    return _resource(session, job)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobResource,
    responses=error_responses(404, 409),
)
async def cancel_job(job_id: uuid.UUID, principal: PrincipalDep, celery: CeleryDep) -> JobResource:
    """Cancel a job: a queued one never runs; a running one is asked to stop."""
    job = await run_db(_cancel_job, principal, job_id)
    if job.state is JobState.CANCELLED:
        await run_in_threadpool(_revoke, celery, job.id)
        await run_in_threadpool(_drop_upload, job)
    return job


def _drop_upload(job: JobResource) -> None:
    # A job cancelled before it ran never reaches the worker that would delete its upload.
    source = job.params.get("source") if job.kind == JobKind.TRANSCODE else None
    upload_id = source.get("upload") if isinstance(source, dict) else None
    if isinstance(upload_id, str):
        storage.upload_path(get_settings().storage_dir, upload_id).unlink(missing_ok=True)


def _revoke(celery: Celery, job_id: uuid.UUID) -> None:
    # Workers skip cancelled jobs anyway; revoking only spares them loading the row.
    try:
        celery.control.revoke(str(job_id))
    except Exception as exc:
        logger.warning("revoking job %s failed (the job stays cancelled): %r", job_id, exc)
