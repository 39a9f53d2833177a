"""Where job outputs live on disk, and writing them so a reader never sees half a file.

Every process that writes or serves outputs (workers, API) must see the same
``SOUS_STORAGE_DIR``: a shared volume in a cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

OUTPUT_NAME = "output"
#: Folder of an HLS output (``index.m3u8`` and its segments) inside the job's folder.
HLS_DIR_NAME = "hls"
THUMBNAIL_NAME = "thumbnail.jpg"
UPLOADS_DIR_NAME = "uploads"

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def job_dir(storage_dir: Path, job_id: uuid.UUID) -> Path:
    """The folder of one job's files (spread over 256 sub-folders)."""
    text = str(job_id)
    return storage_dir / "jobs" / text[:2] / text


def output_path(storage_dir: Path, job_id: uuid.UUID) -> Path:
    return job_dir(storage_dir, job_id) / OUTPUT_NAME


def hls_dir(storage_dir: Path, job_id: uuid.UUID) -> Path:
    return job_dir(storage_dir, job_id) / HLS_DIR_NAME


def thumbnail_path(storage_dir: Path, job_id: uuid.UUID) -> Path:
    return job_dir(storage_dir, job_id) / THUMBNAIL_NAME


def uploads_dir(storage_dir: Path) -> Path:
    """The folder uploaded inputs wait in until their job ends."""
    return storage_dir / UPLOADS_DIR_NAME


def new_upload_id() -> str:
    return uuid.uuid4().hex


def upload_path(storage_dir: Path, upload_id: str) -> Path:
    """Where the upload ``upload_id`` (a uuid4 hex) is stored; ValueError for any other id."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"not an upload id: {upload_id[:64]!r}")
    return uploads_dir(storage_dir) / upload_id


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file to write that appears at ``path`` only once it is complete (and not on error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with partial.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
