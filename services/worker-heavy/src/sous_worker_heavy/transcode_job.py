"""Transcode jobs: find the input, run the media engine, put the outputs in place.

Outputs go to the job's folder in storage only once complete (``output`` or ``hls/``,
``thumbnail.jpg``); a redelivered job overwrites them cleanly. The uploaded input is
deleted when the job ends for good, kept while it may still be retried.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from sous_core import jobs, metrics, quotas, storage, telemetry
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.errors import JobCancelled, PermanentJobError
from sous_core.job_runner import JobContext
from sous_core.settings import Settings, get_settings
from sous_core.transcode_params import TranscodeParams, UploadSource, UrlSource
from sous_fetch.fetching import FetchLimits, fetch_url
from sous_worker_heavy.media import MediaLimits, TranscodeOutcome, transcode

logger = logging.getLogger("sous.transcode")

CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "m4a": "audio/mp4"}
#: Environment variable the worker's main process sets to its pool size (see worker.py).
POOL_SIZE_VARIABLE = "SOUS_HEAVY_POOL_PROCESSES"


def encoder_threads() -> int:
    """Threads per ffmpeg so that a full pool uses the cores without oversubscribing them."""
    pool = max(1, int(os.environ.get(POOL_SIZE_VARIABLE, "1") or 1))
    return max(1, (os.cpu_count() or 1) // pool)


def run_transcode(context: JobContext) -> dict[str, Any]:
    params = context.params_as(TranscodeParams)
    settings = get_settings()
    if context.result and "output" in context.result:
        # An earlier attempt finished the transcode and put its output in place, then
        # died before its outcome was recorded: that output is the result (its upload
        # may be gone already, and its minutes were charged).
        _drop_upload(params, settings)
        return context.result
    folder = storage.job_dir(settings.storage_dir, context.job_id)
    work = folder / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        source = _input_file(params, settings, work, context)
        preset = params.options.preset
        with telemetry.outbound_span("ffmpeg transcode", context.job_id, **{"sous.preset": preset}):
            outcome = transcode(
                source,
                params.options,
                work / "out",
                limits=MediaLimits(
                    max_duration=settings.transcode_max_duration,
                    max_dimension=settings.transcode_max_dimension,
                    max_file_bytes=settings.max_upload_bytes,
                    time_factor=settings.transcode_time_factor,
                    min_time_limit=settings.transcode_min_time_limit,
                ),
                threads=encoder_threads(),
                on_progress=context.set_progress,
                should_stop=context.should_stop,
            )
        _observe_speed(preset, outcome.result)
        result = _put_in_place(outcome, folder, params)
        _charge_minutes(context, result)
        # Recorded before the upload is dropped: a redelivery after this point returns it
        # rather than failing for the missing input.
        context.checkpoint(result)
    except (PermanentJobError, JobCancelled):
        _drop_upload(params, settings)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _drop_upload(params, settings)
    return result


def _observe_speed(preset: str, result: dict[str, Any]) -> None:
    """Transcode speed (x realtime) and seconds of input processed, for the dashboards."""
    speed, seconds = result.get("speed"), result.get("encode_seconds")
    if isinstance(speed, int | float) and isinstance(seconds, int | float) and speed > 0:
        metrics.TRANSCODE_SPEED.labels(preset=preset).observe(speed)
        metrics.TRANSCODE_INPUT_SECONDS.labels(preset=preset).inc(speed * seconds)


def _input_file(
    params: TranscodeParams, settings: Settings, work: Path, context: JobContext
) -> Path:
    if isinstance(params.source, UploadSource):
        path = storage.upload_path(settings.storage_dir, params.source.upload)
        if not path.is_file():
            raise PermanentJobError(
                "input_missing",
                "The uploaded file is no longer stored (it was removed or never completed).",
            )
        return path
    assert isinstance(params.source, UrlSource)
    path = work / "input"
    with (
        telemetry.outbound_span("GET", context.job_id, **{"url.full": params.source.url}),
        path.open("wb") as sink,
    ):
        outcome = fetch_url(
            params.source.url,
            # A video may take minutes to download, and may be as large as an upload.
            limits=dataclasses.replace(
                FetchLimits.from_settings(settings),
                total_timeout_seconds=max(settings.fetch_total_timeout, 600.0),
                max_bytes=settings.max_upload_bytes,
            ),
            allow_networks=settings.fetch_allowed_networks,
            should_stop=context.should_stop,
            body_sink=sink,
        )
    if outcome.truncated:
        raise PermanentJobError(
            "input_too_large",
            f"{params.source.url} is larger than the {settings.max_upload_bytes}-byte limit.",
        )
    return path


def _put_in_place(
    outcome: TranscodeOutcome, folder: Path, params: TranscodeParams
) -> dict[str, Any]:
    result = dict(outcome.result)
    described = dict(result.get("output") or {})
    if outcome.output.is_dir():
        target = folder / "hls"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(outcome.output, target)
        files = sorted(path.name for path in target.iterdir())
        described.update(kind="hls", files=files)
    else:
        target = folder / storage.OUTPUT_NAME
        os.replace(outcome.output, target)
        container = params.options.spec.container
        described.update(
            kind="file",
            content_type=CONTENT_TYPES.get(container, "application/octet-stream"),
            filename=f"output.{container}",
            size_bytes=target.stat().st_size,
        )
    result["output"] = described
    thumbnail = folder / "thumbnail.jpg"
    if outcome.thumbnail is not None:
        os.replace(outcome.thumbnail, thumbnail)
        result["thumbnail"] = {"content_type": "image/jpeg", "size_bytes": thumbnail.stat().st_size}
    else:
        thumbnail.unlink(missing_ok=True)
    return result


def _charge_minutes(context: JobContext, result: dict[str, Any]) -> None:
    """Count the input's minutes against the tenant's ``transcode_input_minutes`` quota."""
    seconds = float((result.get("input") or {}).get("duration") or 0)
    minutes = max(1, math.ceil(seconds / 60)) if seconds else 0
    if not minutes:
        return
    with session_scope() as session:
        tenant_id = jobs.get_job(session, context.job_id).tenant_id
        quotas.add_usage(session, tenant_id, quotas.TRANSCODE_INPUT_MINUTES, minutes, utcnow())


def _drop_upload(params: TranscodeParams, settings: Settings) -> None:
    if isinstance(params.source, UploadSource):
        storage.upload_path(settings.storage_dir, params.source.upload).unlink(missing_ok=True)
