"""``POST /v1/transcodes`` (an uploaded video or a URL) and ``GET /v1/presets``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from celery import Celery
from fastapi import APIRouter, Depends, Header, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sous_api.deps import CeleryDep, PrincipalDep, get_principal, run_db
from sous_api.errors import AUTHENTICATED_ROUTE_ERRORS, ApiError, error_responses
from sous_api.routes.jobs import job_accepted
from sous_api.schemas import JobResource
from sous_api.submission import refusal_error, submit_job
from sous_api.uploads import ReceivedUpload, receive_upload
from sous_core import submissions
from sous_core.apikeys import Principal
from sous_core.db.models import Job
from sous_core.params import MAX_URL_LENGTH, check_callback_url, check_fetch_url
from sous_core.settings import get_settings
from sous_core.tasks import JobKind
from sous_core.transcode_params import (
    PRESETS,
    TranscodeOptions,
    TranscodeParams,
    UploadSource,
    UrlSource,
)

router = APIRouter(
    prefix="/v1/transcodes", tags=["transcodes"], responses=AUTHENTICATED_ROUTE_ERRORS
)
presets_router = APIRouter(
    prefix="/v1/presets", tags=["transcodes"], responses=AUTHENTICATED_ROUTE_ERRORS
)


class TranscodeUrlRequest(BaseModel):
    """A transcode of a video the worker downloads (under the same rules as fetches)."""

    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="Absolute http(s) URL of the input video.",
        examples=["https://example.com/clip.mp4"],
    )
    options: TranscodeOptions
    callback_url: str | None = Field(
        default=None, description="POSTed the finished job (signed, see the README)."
    )

    @field_validator("source_url")
    @classmethod
    def _valid_source(cls, url: str) -> str:
        return check_fetch_url(url)

    @field_validator("callback_url")
    @classmethod
    def _valid_callback(cls, url: str | None) -> str | None:
        return check_callback_url(url)


def _request_body_schemas() -> dict[str, Any]:
    options = TranscodeOptions.model_json_schema()
    url_request = TranscodeUrlRequest.model_json_schema()
    url_request.pop("$defs", None)
    url_request["properties"]["options"] = options
    upload_form = {
        "type": "object",
        "required": ["file", "options"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "The input video."},
            "options": {
                "type": "string",
                "description": 'TranscodeOptions as JSON, e.g. {"preset": "mp4-h264-720p"}.',
            },
            "callback_url": {"type": "string"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": upload_form},
                "application/json": {"schema": url_request},
            },
        }
    }


def parse_options(text: str) -> TranscodeOptions:
    """The ``options`` form field (a JSON object) validated; errors name ``options.<field>``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    try:
        return TranscodeOptions.model_validate(data)
    except ValidationError as exc:
        raise _located(exc, "options") from None


def _located(exc: ValidationError, *prefix: str) -> RequestValidationError:
    errors = [
        {"type": error["type"], "loc": (*prefix, *error["loc"]), "msg": error["msg"]}
        for error in exc.errors(include_url=False)
    ]
    return RequestValidationError(errors)


def _parse_callback(text: str) -> str | None:
    return check_callback_url(text.strip() or None)


def _earlier_upload(session: Session, principal: Principal, key: str | None) -> str | None:
    """The upload of the job already submitted with this key, if it was an upload."""
    if key is None:
        return None
    params = session.execute(
        select(Job.params).where(Job.tenant_id == principal.tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()
    source = (params or {}).get("source")
    upload = source.get("upload") if isinstance(source, dict) else None
    return upload if isinstance(upload, str) else None


def _submit_upload(
    session: Session,
    celery: Celery,
    principal: Principal,
    upload: ReceivedUpload,
    options: TranscodeOptions,
    idempotency_key: str | None,
    callback_url: str | None,
) -> tuple[JobResource, bool]:
    # A retry carries a fresh upload; naming the first one's makes it an exact replay.
    upload_id = _earlier_upload(session, principal, idempotency_key) or upload.upload_id
    source = UploadSource(upload=upload_id, filename=upload.filename, size_bytes=upload.size_bytes)
    params = TranscodeParams(source=source, options=options).model_dump()
    return submit_job(
        session, celery, principal, JobKind.TRANSCODE, params, idempotency_key, callback_url
    )


async def _transcode_upload(
    request: Request, celery: Celery, principal: Principal, idempotency_key: str | None
) -> tuple[JobResource, bool]:
    settings = get_settings()
    upload = await receive_upload(
        request,
        settings.storage_dir,
        max_file_bytes=settings.max_upload_bytes,
        fields={"options": parse_options, "callback_url": _parse_callback},
        required=("options",),
    )
    options = upload.fields["options"]
    callback_url = upload.fields.get("callback_url")
    assert isinstance(options, TranscodeOptions)
    assert callback_url is None or isinstance(callback_url, str)
    try:
        job, replayed = await run_db(
            _submit_upload, celery, principal, upload, options, idempotency_key, callback_url
        )
    except BaseException:
        await _delete(upload)
        raise
    if replayed:
        await _delete(upload)  # The replayed job has the first request's upload.
    return job, replayed


async def _delete(upload: ReceivedUpload) -> None:
    """Delete an upload no job will read (shielded: also when the request is cancelled)."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(upload.path.unlink, missing_ok=True)


async def _transcode_url(
    request: Request, celery: Celery, principal: Principal, idempotency_key: str | None
) -> tuple[JobResource, bool]:
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "The request body is not valid JSON.") from None
    try:
        body = TranscodeUrlRequest.model_validate(data)
    except ValidationError as exc:
        raise _located(exc, "body") from None
    source = UrlSource(url=body.source_url)
    params = TranscodeParams(source=source, options=body.options).model_dump()
    return await run_db(
        submit_job,
        celery,
        principal,
        JobKind.TRANSCODE,
        params,
        idempotency_key,
        body.callback_url,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobResource,
    responses=error_responses(400, 413, 415, 503),
    openapi_extra=_request_body_schemas(),
)
async def submit_transcode(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobResource:
    """Queue a transcode of an uploaded video or of a URL; follow it at ``Location``.

    Upload with ``multipart/form-data``: a ``file`` part and an ``options`` field holding
    the options as JSON (put ``options`` first and a bad one is refused before the
    upload is read). Or send JSON: ``{"source_url": ..., "options": {...}}``.
    """
    try:
        submissions.check_idempotency_key(idempotency_key)
    except submissions.SubmissionRefused as exc:
        raise refusal_error(exc) from None
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        job, replayed = await _transcode_upload(request, celery, principal, idempotency_key)
    elif media_type == "application/json":
        job, replayed = await _transcode_url(request, celery, principal, idempotency_key)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send multipart/form-data (a file and options) or application/json "
            "(source_url and options).",
        )
    return await job_accepted(request, response, job, replayed)


class PresetResource(BaseModel):
    name: str
    description: str
    container: str = Field(description="mp4, webm, m4a or hls (a playlist and segments).")
    video_codec: str | None = Field(description="Null for audio-only presets.")
    audio_codec: str
    max_height: int | None = Field(description="Video is scaled down to this, never up.")


class PresetList(BaseModel):
    items: list[PresetResource]


@presets_router.get("", response_model=PresetList, dependencies=[Depends(get_principal)])
async def list_presets() -> PresetList:
    """The renditions a transcode's ``options.preset`` may name."""
    return PresetList(
        items=[
            PresetResource(
                name=preset.name,
                description=preset.description,
                container=preset.container,
                video_codec=preset.video_codec,
                audio_codec=preset.audio_codec,
                max_height=preset.max_height,
            )
            for preset in PRESETS.values()
        ]
    )
