"""The stack Sous is compared with: the FastAPI + Celery + Redis tutorial, as users hand-roll it.

A FastAPI endpoint calls ``task.delay()`` on a Celery app with default settings (RabbitMQ
broker, Redis results), a prefork worker with the default concurrency runs the same work
Sous does (fetch a URL, send an email). No job table, no auth, no confirms, no metrics:
this is what Sous must still beat. Configured only by the benchmark, through
``BASELINE_BROKER_URL``, ``BASELINE_RESULT_BACKEND``, ``BASELINE_SMTP_PORT``.

    uvicorn baseline.app:api          # the endpoint
    celery -A baseline.app worker     # the worker
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import subprocess
from email.message import EmailMessage
from typing import Any

import httpx
from celery import Celery
from celery.result import AsyncResult
from fastapi import FastAPI
from pydantic import BaseModel

celery = Celery(
    "baseline",
    broker=os.environ.get("BASELINE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BASELINE_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
)


@celery.task
def fetch(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=10, follow_redirects=True)
    return {
        "status_code": response.status_code,
        "size_bytes": len(response.content),
        "sha256": hashlib.sha256(response.content).hexdigest(),
    }


@celery.task
def send_email(to: list[str], subject: str, text: str) -> str:
    message = EmailMessage()
    message["From"] = "baseline@localhost"
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(text)
    port = int(os.environ.get("BASELINE_SMTP_PORT", "25"))
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)
    return "sent"


@celery.task
def transcode(source: str, target: str) -> str:
    """The same work as Sous's mp4-h264-720p preset, on the one and only queue."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", source,
         "-vf", "scale=-2:'min(720,ih)'", "-c:v", "libx264", "-preset", "veryfast",
         "-crf", "23", "-c:a", "aac", target],
        check=True,
    )  # fmt: skip
    return target


api = FastAPI(title="baseline")


class FetchIn(BaseModel):
    url: str


class EmailIn(BaseModel):
    to: list[str]
    subject: str
    text: str


@api.post("/fetch", status_code=202)
def submit_fetch(body: FetchIn) -> dict[str, str]:
    return {"task_id": fetch.delay(body.url).id}


@api.post("/email", status_code=202)
def submit_email(body: EmailIn) -> dict[str, str]:
    return {"task_id": send_email.delay(body.to, body.subject, body.text).id}


class TranscodeIn(BaseModel):
    source: str
    target: str


@api.post("/transcode", status_code=202)
def submit_transcode(body: TranscodeIn) -> dict[str, str]:
    return {"task_id": transcode.delay(body.source, body.target).id}


@api.get("/tasks/{task_id}")
def task_status(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery)
    return {"task_id": task_id, "state": result.state}
