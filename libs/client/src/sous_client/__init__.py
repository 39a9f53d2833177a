"""Sous client: submit background jobs over HTTP, follow them, download their output.

::

    from sous_client import Sous

    with Sous("http://127.0.0.1:8000", api_key="sk_...") as sous:
        job = sous.wait(sous.submit_transcode("clip.mp4", preset="mp4-h264-720p"))
        sous.download(job, "clip-720p.mp4")
"""

from sous_client.async_client import AsyncSous
from sous_client.client import Sous
from sous_client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    EventsUnavailable,
    FieldError,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    ServerError,
    SousError,
    Unauthorized,
    Unavailable,
    ValidationError,
    WaitTimeout,
)
from sous_client.models import Job, JobState, MissedPolicy, Preset, Schedule, ScheduleRun
from sous_client.protocol import RetryPolicy

__all__ = [
    "AsyncSous",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "EventsUnavailable",
    "FieldError",
    "Forbidden",
    "Gone",
    "Job",
    "JobState",
    "MissedPolicy",
    "NotFound",
    "PayloadTooLarge",
    "Preset",
    "QuotaExceeded",
    "RateLimited",
    "RetryPolicy",
    "Schedule",
    "ScheduleRun",
    "ServerError",
    "Sous",
    "SousError",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
]
