"""What the sync and the async client share, free of I/O: requests, retries, uploads, waiting.

Each API operation is described once as a :class:`Call` (method, path, body, whether
repeating it is safe); :class:`~sous_client.client.Sous` and
:class:`~sous_client.async_client.AsyncSous` only send calls and read answers, each with
its own I/O. The retry decisions (:class:`RetryPolicy`), the streamed multipart body of
an upload (:class:`UploadForm`), the temporary file of a download
(:class:`DownloadTarget`) and the deadline and poll backoff of a wait
(:class:`WaitClock`) live here too.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from sous_client.errors import (
    ConnectionFailed,
    EventsUnavailable,
    QuotaExceeded,
    SousError,
    WaitTimeout,
)
from sous_client.events import ServerSentEvent
from sous_client.models import Job

#: Where the API is when neither ``base_url`` nor ``SOUS_URL`` says otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds a single request may take to connect, send, or wait for each read.
DEFAULT_TIMEOUT = 30.0
#: Bytes read from a file per chunk of an upload, and written per chunk of a download.
CHUNK_BYTES = 256 * 1024
#: Longest quiet spell on an event stream before it is taken as broken; the API sends a
#: ``: ping`` every 15 s, so a healthy stream is never this quiet.
EVENTS_READ_TIMEOUT = 45.0
#: Event streams that may break in a row, with no event between, before ``wait`` polls.
EVENTS_MAX_FAILURES = 3
USER_AGENT = "sous-client/0.1.0"

JobRef = Job | uuid.UUID | str
ProgressCallback = Callable[[int, int | None], None]


def job_id(job: JobRef) -> str:
    """The id of a job given as a :class:`Job`, a UUID or its string."""
    if isinstance(job, Job):
        return str(job.id)
    return str(uuid.UUID(str(job)))


def is_url(source: str | os.PathLike[str]) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Call:
    """One API request. ``idempotent`` calls may be repeated after a broken connection."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True


def _without_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def idempotency_header(idempotency_key: str | None) -> dict[str, str]:
    """``Idempotency-Key`` (a new uuid4 unless given), made once per submission and sent
    with each of its attempts: the API answers a repeat with the first request's job."""
    return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def submission(path: str, body: dict[str, Any], idempotency_key: str | None) -> Call:
    """A job submission, safe to repeat thanks to its ``Idempotency-Key``."""
    return Call("POST", path, json=body, headers=idempotency_header(idempotency_key))


def submit_fetch(
    url: str, store_body: bool, callback_url: str | None, idempotency_key: str | None
) -> Call:
    body = _without_none(url=url, store_body=store_body, callback_url=callback_url)
    return submission("/v1/fetches", body, idempotency_key)


def submit_fetches(
    urls: Sequence[str], store_body: bool, callback_url: str | None, idempotency_key: str | None
) -> Call:
    if isinstance(urls, str):
        raise TypeError("submit_fetches takes a list of URLs; use submit_fetch for one")
    body = _without_none(urls=list(urls), store_body=store_body, callback_url=callback_url)
    return submission("/v1/fetches", body, idempotency_key)


def _addresses(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def submit_email(
    to: str | Sequence[str],
    subject: str,
    *,
    text: str | None,
    html: str | None,
    cc: str | Sequence[str],
    bcc: str | Sequence[str],
    reply_to: str | None,
    headers: Mapping[str, str] | None,
    callback_url: str | None,
    idempotency_key: str | None,
) -> Call:
    body = _without_none(
        to=_addresses(to),
        subject=subject,
        text=text,
        html=html,
        cc=_addresses(cc) or None,
        bcc=_addresses(bcc) or None,
        reply_to=reply_to,
        headers=dict(headers) if headers else None,
        callback_url=callback_url,
    )
    return submission("/v1/emails", body, idempotency_key)


def transcode_options(
    preset: str, thumbnail_at: float | None, start: float | None, duration: float | None
) -> dict[str, Any]:
    return _without_none(preset=preset, thumbnail_at=thumbnail_at, start=start, duration=duration)


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def submit_transcode_url(
    source_url: str,
    options: dict[str, Any],
    callback_url: str | None,
    idempotency_key: str | None,
) -> Call:
    body = _without_none(source_url=source_url, options=options, callback_url=callback_url)
    return submission("/v1/transcodes", body, idempotency_key)


def upload_form(
    path: str | os.PathLike[str], options: dict[str, Any], callback_url: str | None
) -> UploadForm:
    fields = {"options": json_text(options)}
    if callback_url is not None:
        fields["callback_url"] = callback_url
    return UploadForm(path, fields)


def submit_transcode_upload(form: UploadForm, idempotency_key: str | None) -> Call:
    """The upload's request; its body comes from ``form.chunks()``, afresh for each attempt."""
    headers = {**idempotency_header(idempotency_key), **form.headers}
    return Call("POST", "/v1/transcodes", headers=headers)


def get_job(job: JobRef) -> Call:
    return Call("GET", f"/v1/jobs/{job_id(job)}")


def cancel_job(job: JobRef) -> Call:
    return Call("POST", f"/v1/jobs/{job_id(job)}/cancel")


def list_jobs(
    *,
    kind: str | None,
    state: str | None,
    parent_id: JobRef | None,
    schedule_id: uuid.UUID | str | None,
    page_size: int,
    cursor: str | None,
) -> Call:
    params = _without_none(
        kind=kind,
        state=None if state is None else str(state),
        parent_id=None if parent_id is None else job_id(parent_id),
        schedule_id=None if schedule_id is None else str(schedule_id),
        limit=str(page_size),
        cursor=cursor,
    )
    return Call("GET", "/v1/jobs", params=params)


def list_presets() -> Call:
    return Call("GET", "/v1/presets")


def schedule_path(schedule_id: uuid.UUID | str | Any) -> str:
    raw = getattr(schedule_id, "id", schedule_id)
    return f"/v1/schedules/{uuid.UUID(str(raw))}"


def create_schedule(
    cron: str,
    job: Mapping[str, Any],
    *,
    name: str,
    timezone: str,
    enabled: bool,
    missed_policy: str,
) -> Call:
    body = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "job": dict(job),
        "enabled": enabled,
        "missed_policy": str(missed_policy),
    }
    # No Idempotency-Key for schedules: a repeat after a broken connection could make two.
    return Call("POST", "/v1/schedules", json=body, idempotent=False)


def update_schedule(schedule_id: uuid.UUID | str | Any, changes: Mapping[str, Any]) -> Call:
    body = {
        name: str(value) if name == "missed_policy" else value for name, value in changes.items()
    }
    return Call("PATCH", schedule_path(schedule_id), json=body)


def list_schedules(page_size: int, cursor: str | None) -> Call:
    return Call("GET", "/v1/schedules", params=_without_none(limit=str(page_size), cursor=cursor))


def list_schedule_runs(
    schedule_id: uuid.UUID | str | Any, page_size: int, cursor: str | None
) -> Call:
    params = _without_none(limit=str(page_size), cursor=cursor)
    return Call("GET", f"{schedule_path(schedule_id)}/runs", params=params)


def output_path(job: JobRef) -> str:
    return f"/v1/jobs/{job_id(job)}/output"


def client_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def make_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


# -- retries -------------------------------------------------------------------------

#: Transport errors after which the request certainly never reached the server.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """When to repeat a request, and after how long.

    Repeated: a 503 or 429 (but not ``quota_exceeded``: it lasts until midnight) and a
    connection that could not be made, for any request; a connection that broke after
    the request was sent, and a 502/504 from a proxy, only for idempotent requests
    (reads, cancels, and submissions, which carry an ``Idempotency-Key``). Delays grow
    exponentially with full jitter; a server's ``Retry-After`` is honoured when it is
    at most ``max_retry_after``, and a longer one ends the retries at once.
    """

    #: Repeats after the first attempt (0 disables retrying).
    retries: int = 3
    #: Ceiling of the first delay in seconds; it doubles with each repeat.
    backoff: float = 0.5
    #: Highest ceiling of a delay, in seconds.
    max_backoff: float = 8.0
    #: Longest ``Retry-After`` waited for, in seconds.
    max_retry_after: float = 30.0

    def backoff_delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max_backoff, backoff * 2**attempt)]."""
        return rng() * min(self.max_backoff, self.backoff * 2**attempt)

    def after_response(
        self,
        attempt: int,
        error: SousError,
        idempotent: bool,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before repeating a request answered with ``error``, or None."""
        if attempt >= self.retries or isinstance(error, QuotaExceeded):
            return None
        if error.status in (429, 503) or (idempotent and error.status in (502, 504)):
            if error.retry_after is not None:
                if error.retry_after > self.max_retry_after:
                    return None
                return error.retry_after
            return self.backoff_delay(attempt, rng)
        return None

    def after_transport_error(
        self,
        attempt: int,
        exc: httpx.TransportError,
        idempotent: bool,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before repeating a request that got no answer, or None."""
        if attempt >= self.retries:
            return None
        if isinstance(exc, NOT_SENT_ERRORS) or idempotent:
            return self.backoff_delay(attempt, rng)
        return None


def connection_failed(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    reason = str(exc) or type(exc).__name__
    return ConnectionFailed(f"No answer from {base_url}: {reason}")


# -- uploads ---------------------------------------------------------------------------


def _quoted(value: str) -> str:
    """A Content-Disposition parameter value, escaped the way browsers do."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class UploadForm:
    """The ``multipart/form-data`` body of an upload, produced in chunks while it is sent.

    Its size is known up front (``Content-Length``), so the API refuses a file past its
    limit before any of it is sent, and progress can be reported as a fraction. The file
    is opened again for each attempt, so a retried upload sends it whole again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fields: Mapping[str, str],
        *,
        boundary: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        self.boundary = boundary or uuid.uuid4().hex
        self.file_size = self.path.stat().st_size
        lines = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        lines.append(
            f"--{self.boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{_quoted(self.path.name)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        self.head = "".join(lines).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_length(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(self.content_length),
        }

    def chunks(self, on_progress: ProgressCallback | None = None) -> Iterator[bytes]:
        """The body, a chunk at a time; ``on_progress(file bytes sent, file size)`` after each."""
        yield self.head
        sent = 0
        if on_progress is not None:
            on_progress(0, self.file_size)
        with self.path.open("rb") as source:
            while sent < self.file_size:
                chunk = source.read(min(CHUNK_BYTES, self.file_size - sent))
                if not chunk:
                    raise OSError(f"{self.path} shrank while it was being uploaded")
                sent += len(chunk)
                yield chunk
                if on_progress is not None:
                    on_progress(sent, self.file_size)
        yield self.tail


# -- downloads -------------------------------------------------------------------------


def filename_from_disposition(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header offers (``filename*`` first), made safe:
    no folders, no leading dots, no control characters."""
    if not header:
        return None
    name: str | None = None
    extended = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", header, re.IGNORECASE)
    if extended:
        name = urllib.parse.unquote(
            extended.group(2).strip(), encoding=extended.group(1) or "utf-8"
        )
    else:
        plain = re.search(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))', header, re.IGNORECASE)
        if plain:
            name = plain.group(1) if plain.group(1) is not None else plain.group(2).strip()
    if name is None:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip().lstrip(".")
    return name or None


class DownloadTarget:
    """Where a download goes: a temporary file beside ``dest``, renamed over it once complete.

    ``dest`` may be a folder: the file is then named as the server suggests, else after the
    job. An interrupted download leaves no partial file behind.
    """

    def __init__(self, dest: str | os.PathLike[str], job: str) -> None:
        self.dest = Path(dest)
        self.job = job
        self.path: Path | None = None
        self._temp: Path | None = None
        self._handle: IO[bytes] | None = None

    def open(self, content_disposition: str | None) -> IO[bytes]:
        if self.dest.is_dir():
            name = filename_from_disposition(content_disposition) or f"{self.job}.out"
            self.path = self.dest / name
        else:
            self.path = self.dest
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # open(..., "xb") rather than tempfile: the file gets the usual permissions (umask),
        # not tempfile's owner-only ones, since it becomes the user's file.
        self._temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        self._handle = self._temp.open("xb")
        return self._handle

    def commit(self) -> Path:
        assert self._handle is not None
        assert self._temp is not None
        assert self.path is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._temp.replace(self.path)
        self._handle = self._temp = None
        return self.path

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        self._handle = self._temp = None


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


# -- waiting ---------------------------------------------------------------------------


@dataclass
class WaitClock:
    """The deadline of one ``wait`` and the growing interval between polls."""

    timeout: float | None
    #: First and longest interval between two polls, in seconds; each is ``factor`` longer.
    poll_initial: float = 0.5
    poll_max: float = 5.0
    factor: float = 1.5
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    _interval: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._interval = self.poll_initial

    def remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (self.clock() - self.started))

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def next_poll(self) -> float:
        """Seconds until the next poll (never past the deadline); the interval then grows."""
        delay = self._interval
        self._interval = min(self.poll_max, self._interval * self.factor)
        remaining = self.remaining()
        return delay if remaining is None else min(delay, remaining)

    def reset_polls(self) -> None:
        self._interval = self.poll_initial

    def events_timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """``base`` with reads that end at the deadline or after a long silence."""
        remaining = self.remaining()
        read = EVENTS_READ_TIMEOUT if remaining is None else min(EVENTS_READ_TIMEOUT, remaining)
        return httpx.Timeout(
            connect=base.connect, write=base.write, pool=base.pool, read=max(read, 0.001)
        )

    def timed_out(self, job: Job | None, job_ref: str) -> WaitTimeout:
        state = f"still {job.state.value} at {job.progress}%" if job is not None else "not seen"
        return WaitTimeout(
            f"Job {job_ref} did not finish within {self.timeout:g} s ({state}).", job=job
        )


def job_from_event(event: ServerSentEvent) -> Job | None:
    """The job an ``event: job`` carries; other events are ignored."""
    return Job.model_validate_json(event.data) if event.event == "job" else None


def events_call(job: JobRef) -> Call:
    return Call("GET", f"/v1/jobs/{job_id(job)}/events", headers={"Accept": "text/event-stream"})


def events_refusal(error: SousError) -> EventsUnavailable | None:
    """An :class:`EventsUnavailable` when ``error`` means the server has no event stream
    here (an older API, a proxy), None when it refused the request (no such job, bad key)."""
    route_missing = error.status == 404 and error.code != "job_not_found"
    if route_missing or error.status in (405, 406, 501):
        return EventsUnavailable(f"The server offers no event stream ({error}).")
    return None


def check_event_stream(response: httpx.Response) -> None:
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "text/event-stream":
        raise EventsUnavailable(f"The server answered {media_type or 'no content type'}.")


def eta_seconds(job: Job, now: datetime | None = None) -> float | None:
    """Seconds until the job's ``eta_at`` (its worker's estimate), if it has one."""
    if job.eta_at is None or job.is_terminal:
        return None
    now = now or datetime.now(UTC)
    eta_at = job.eta_at if job.eta_at.tzinfo else job.eta_at.replace(tzinfo=UTC)
    return max(0.0, (eta_at - now).total_seconds())
