"""Sous configuration: every setting comes from a ``SOUS_`` environment variable, read once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sous_core.netguard import parse_networks


def parse_kind_seconds(text: str) -> dict[str, float]:
    """``"fetch=60, email=60"`` → ``{"fetch": 60.0, "email": 60.0}``."""
    result: dict[str, float] = {}
    for part in filter(None, (item.strip() for item in text.split(","))):
        kind, sep, seconds = part.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1
        if not sep or not kind.strip() or value <= 0:
            raise ValueError(f"expected kind=seconds with seconds > 0, got {part!r}")
        result[kind.strip()] = value
    return result


class Settings(BaseSettings):
    """All of Sous's settings; ``.env.example`` documents each variable."""

    model_config = SettingsConfigDict(env_prefix="SOUS_", extra="ignore")

    #: ``development`` or ``production``; production refuses placeholder secrets.
    environment: Literal["development", "production"] = "development"
    #: AMQP URL of RabbitMQ (``filesystem://`` in the embedded single-host mode).
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    #: Celery result backend (group/chord results); job outcomes live in the database.
    result_backend: str = "redis://127.0.0.1:6379/0"
    #: SQLAlchemy URL of the job database (``sqlite:///…`` in the embedded mode).
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/sous"
    #: Database connections each process may open; also the API's request threads.
    database_pool_size: int = Field(default=20, ge=1, le=200)
    #: Folder the ``filesystem://`` broker keeps its messages in; every process must share it.
    embedded_dir: Path = Path(".sous/broker")
    #: Where job outputs and uploads are stored.
    storage_dir: Path = Path(".sous/storage")
    #: Address and port the API listens on.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: uvicorn worker processes of the API.
    api_workers: int = Field(default=1, ge=1, le=64)
    #: Largest JSON request body the API accepts, in bytes (413 past it).
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Public base URL of the API, used in ``Location`` headers when set (else the request's).
    public_url: str = ""
    #: Requests per second each tenant may make to ``/v1`` (a token bucket in Redis, shared
    #: by every API replica; 429 past it); 0 turns rate limiting off.
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    #: Requests a tenant may make in a burst above that rate (the bucket's size); 0: the
    #: per-second rate, rounded up.
    rate_limit_burst: int = Field(default=0, ge=0)
    #: Redis the rate limiter keeps its buckets in; empty: the result backend's.
    rate_limit_redis_url: str = ""
    #: Seconds the API may reuse a successful API-key check before asking the database
    #: again (per process): how long a revoked key can keep working. 0: check every request.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    #: Browser origins allowed to call the API, comma-separated
    #: (``https://app.example.com``); empty: no CORS headers at all.
    cors_origins: str = ""
    #: Seconds the API waits for the broker (connect and publisher confirm) before answering 503.
    broker_publish_timeout: float = Field(default=1.5, gt=0, le=30)
    #: Deliveries of one message before RabbitMQ dead-letters it
    #: (a task that keeps killing workers).
    max_deliveries: int = Field(default=5, ge=1, le=100)
    #: Retries of a transient failure (network, 5xx) before the job fails.
    max_retries: int = Field(default=3, ge=0, le=20)
    #: First retry delay in seconds; doubles each retry, with full jitter,
    #: capped by ``retry_backoff_max``.
    retry_backoff: float = Field(default=2.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    #: Seconds a worker keeps retrying (backoff with jitter) to record a job's outcome or
    #: checkpoint while the database is unreachable, before it publishes the task again and
    #: the work is redone. Five minutes outlasts a PostgreSQL restart or an HA failover;
    #: past that, a held worker slot costs more than redoing the work. 0: never wait.
    outcome_write_patience_seconds: float = Field(default=300.0, ge=0, le=3600)
    #: CIDRs fetches may reach even though they are not public (e.g. ``127.0.0.2/32,10.1.0.0/16``).
    fetch_allow_networks: str = ""
    #: Per-hop timeout of a fetch in seconds.
    fetch_timeout: float = Field(default=10.0, gt=0, le=300)
    #: Bytes of a response a fetch reads before it stops (the result says ``truncated``).
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    #: Redirects a fetch follows, each hop re-checked against the address rules.
    fetch_max_redirects: int = Field(default=5, ge=0, le=30)
    #: Seconds one fetch may take in all (every hop, body included) before it times out.
    fetch_total_timeout: float = Field(default=60.0, gt=0, le=3600)
    #: Fetches one worker process runs at once against the same host name.
    fetch_per_host_concurrency: int = Field(default=8, ge=1, le=1000)
    #: Most URLs one batch fetch (``{"urls": [...]}``) may carry.
    fetch_max_batch: int = Field(default=1000, ge=1, le=10000)
    #: SMTP server that sends email jobs.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    #: SMTP login; empty for a server that needs none.
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    #: Upgrade the SMTP connection with STARTTLS (the server's certificate is verified).
    smtp_starttls: bool = False
    #: Seconds each SMTP command may take.
    smtp_timeout: float = Field(default=30.0, gt=0, le=600)
    #: Sender of every email (``Name <address>`` or an address).
    mail_from: str = "Sous <sous@localhost>"
    #: Most recipients (to + cc + bcc) of one email.
    mail_max_recipients: int = Field(default=50, ge=1, le=1000)
    #: Largest email body (text + html, UTF-8 bytes); larger ones get a 413.
    mail_max_body_bytes: int = Field(default=512 * 1024, ge=1024)
    #: Attempts to deliver a webhook before it is recorded as failed.
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    #: First webhook retry delay in seconds; doubles each attempt, with jitter, up to the max.
    webhook_backoff: float = Field(default=5.0, ge=0)
    webhook_backoff_max: float = Field(default=600.0, ge=0)
    #: Seconds one webhook POST may take.
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    #: Seconds between two looks for webhooks due (each fast worker process).
    webhook_poll_interval: float = Field(default=0.5, gt=0, le=60)
    #: Seconds a job may stay ``pending`` (row written, message never confirmed) before the
    #: scheduler's sweep publishes it again, e.g. after the API died mid-submit.
    pending_requeue_after: float = Field(default=120.0, gt=0)
    #: Seconds between two sweeps for such jobs.
    pending_sweep_interval: float = Field(default=60.0, gt=0)
    #: Days a finished job (and its stored output) is kept before the retention purge.
    retention_days: int = Field(default=30, ge=1, le=3650)
    #: Jobs the purge deletes per transaction (short ones, so the table is never locked long).
    purge_batch_size: int = Field(default=1000, ge=1, le=100000)
    #: API keys expiring within this many days are reported by the weekly key check.
    key_expiry_warning_days: int = Field(default=14, ge=1, le=365)
    #: Time zone of the maintenance schedule's cron expressions.
    maintenance_timezone: str = "UTC"
    #: When daily quotas start afresh (cron, in the maintenance time zone).
    quota_reset_cron: str = "0 0 * * *"
    #: When expired API keys are revoked and soon-to-expire ones reported (weekly).
    key_expiry_cron: str = "0 3 * * 1"
    #: When old jobs and their outputs are purged (monthly); also `sous maintenance run`.
    retention_cron: str = "0 4 1 * *"
    #: Seconds between two runs of the stuck-job reaper.
    reaper_interval: float = Field(default=60.0, gt=0)
    #: Seconds between two heartbeats of each running job, sent by its worker.
    heartbeat_interval: float = Field(default=2.0, gt=0, le=600)
    #: Seconds without a heartbeat after which a running job counts as stuck, per kind
    #: (``kind=seconds,...``); kinds not listed use ``reaper_default_silence``.
    reaper_silence: str = "fetch=60,email=60,transcode=300"
    reaper_default_silence: float = Field(default=120.0, gt=0)
    #: Seconds between two looks for user schedules that are due (in the scheduler).
    schedule_poll_interval: float = Field(default=1.0, gt=0, le=60)
    #: A tick this many seconds late still fires; older ones follow the schedule's policy
    #: for missed ticks (``skip``, or ``catch_up`` with one run).
    schedule_misfire_grace: float = Field(default=60.0, gt=0)
    #: Largest upload a transcode accepts, in bytes (413 past it).
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)
    #: Longest input a transcode accepts, in seconds.
    transcode_max_duration: float = Field(default=4 * 3600.0, gt=0)
    #: Largest input width or height a transcode accepts, in pixels.
    transcode_max_dimension: int = Field(default=4096, ge=16)
    #: A transcode may take this many times its (trimmed) input's duration, but at least
    #: ``transcode_min_time_limit`` seconds; past it ffmpeg is stopped and the job fails.
    transcode_time_factor: float = Field(default=10.0, gt=0)
    transcode_min_time_limit: float = Field(default=120.0, gt=0)
    #: Niceness the heavy worker (and its ffmpeg) raises itself to, so that on a shared
    #: machine the API and the fast pool stay responsive while transcodes use every core.
    heavy_worker_nice: int = Field(default=19, ge=0, le=19)
    #: Log level of every Sous process.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``json`` (one JSON object per line), ``text`` (readable lines), or ``auto``: text
    #: when stdout is a terminal, JSON otherwise (containers, log collectors).
    log_format: Literal["auto", "json", "text"] = "auto"
    #: Workers and the scheduler serve ``/metrics`` and ``/healthz`` here (0 turns it off;
    #: the API serves ``/metrics`` on its own port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    #: Folder for prometheus-client's multiprocess files (prefork workers, several API
    #: processes). Empty: a fresh folder under the system temp dir per process tree.
    metrics_multiproc_dir: str = ""
    #: Optional RabbitMQ management API base URL, for ``sous queues`` unacked counts.
    rabbitmq_management_url: str = ""

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("reaper_silence")
    @classmethod
    def _silence_parses(cls, value: str) -> str:
        parse_kind_seconds(value)
        return value

    @property
    def reaper_silence_by_kind(self) -> dict[str, float]:
        return parse_kind_seconds(self.reaper_silence)

    @property
    def fetch_allowed_networks(self) -> tuple:
        return parse_networks(self.fetch_allow_networks)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    def check_production_ready(self) -> None:
        """Refuse to run in production with the development defaults' placeholder credentials."""
        if self.environment != "production":
            return
        placeholders = [
            name
            for name, value in (("SOUS_BROKER_URL", self.broker_url),)
            if "guest:guest@" in value
        ]
        if placeholders:
            raise RuntimeError(
                "refusing to start in production with placeholder credentials in "
                + ", ".join(placeholders)
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    settings = Settings()
    settings.check_production_ready()
    return settings
