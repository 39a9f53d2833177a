"""Streaming a ``multipart/form-data`` upload to the uploads folder as it arrives.

Starlette's form parser would spool the file into a temporary file of its own; this
reads ``request.stream()`` through python-multipart's push parser instead and writes
the file part straight to disk, so a request never holds more than about
``WRITE_BUFFER_BYTES`` of it in memory. The bytes are counted as they arrive and the
upload is refused with a 413 the moment it passes the limit. The file is written under
a hidden partial name and renamed to ``storage.upload_path`` only once complete::

    upload = await receive_upload(
        request, storage_dir, max_file_bytes=limit, fields={"options": parse_options}
    )
    upload.path, upload.size_bytes, upload.fields["options"]
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from sous_api.errors import ApiError
from sous_core import storage

#: File bytes gathered in memory before each write to disk (one thread hop per write).
WRITE_BUFFER_BYTES = 1024 * 1024
#: Largest value of a form field other than the file (the options JSON, a callback URL).
MAX_FIELD_BYTES = 64 * 1024
#: Bytes a body may carry besides the file: the other fields, part headers, boundaries.
FORM_OVERHEAD_BYTES = 256 * 1024
#: Longest file name kept from the client (longer ones are cut).
MAX_FILENAME_LENGTH = 255
#: The form field that carries the file.
FILE_FIELD = "file"

#: Turns a text field's value into what the caller wants, or raises ``ValueError``.
FieldParser = Callable[[str], object]


@dataclass(frozen=True)
class ReceivedUpload:
    """A complete upload, stored at ``path``, and the parsed values of the other fields."""

    upload_id: str
    path: Path
    filename: str
    size_bytes: int
    fields: dict[str, object]


def invalid_field(name: str, message: str) -> RequestValidationError:
    """A 422 in the API's validation error shape, about one form field."""
    return RequestValidationError([{"type": "value_error", "loc": (name,), "msg": message}])


def safe_filename(raw: str) -> str:
    """The client's file name without folders, control or shell-unfriendly characters."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(char for char in name if char.isprintable() and char not in '<>:"|?*')
    return name.strip().lstrip(".")[:MAX_FILENAME_LENGTH] or "upload"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _too_large(max_file_bytes: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"The uploaded file is larger than the limit of {max_file_bytes} bytes.",
    )


def _malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_multipart", f"The multipart/form-data body {message}.")


@dataclass
class _FormReader:
    """python-multipart's callbacks: file bytes into ``pending``, text fields parsed."""

    max_file_bytes: int
    parsers: Mapping[str, FieldParser]
    filename: str | None = None
    file_bytes: int = 0
    pending: bytearray = field(default_factory=bytearray)
    values: dict[str, object] = field(default_factory=dict)
    ended: bool = False
    _part: str | None = None
    _text: bytearray = field(default_factory=bytearray)
    _header_name: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""

    def on_part_begin(self) -> None:
        self._part = None
        self._disposition = b""
        self._text.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _malformed("has a part without a name in its Content-Disposition")
        name = _decode(options[b"name"])
        if name == FILE_FIELD:
            if self.filename is not None:
                raise invalid_field(FILE_FIELD, "send exactly one file")
            self.filename = safe_filename(_decode(options.get(b"filename", b"")))
        elif name in self.parsers:
            if name in self.values:
                raise invalid_field(name, "given more than once")
        else:
            accepted = ", ".join([FILE_FIELD, *self.parsers])
            raise invalid_field(name, f"is not a field of this form (send: {accepted})")
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise _too_large(self.max_file_bytes)
            self.pending += memoryview(data)[start:end]
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise invalid_field(str(self._part), f"is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._part is None or self._part == FILE_FIELD:
            return
        try:
            text = bytes(self._text).decode()
        except UnicodeDecodeError:
            raise invalid_field(self._part, "is not valid UTF-8") from None
        try:
            self.values[self._part] = self.parsers[self._part](text)
        except ValueError as exc:
            raise invalid_field(self._part, str(exc)) from None

    def on_end(self) -> None:
        self.ended = True


def _open_partial(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _complete(handle: BinaryIO, partial: Path, final: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    partial.replace(final)


def _abandon(handle: BinaryIO, partial: Path) -> None:
    handle.close()
    partial.unlink(missing_ok=True)


async def receive_upload(
    request: Request,
    storage_dir: Path,
    *,
    max_file_bytes: int,
    fields: Mapping[str, FieldParser],
    required: Collection[str] = (),
) -> ReceivedUpload:
    """Store the request's ``file`` part as a new upload and parse its other ``fields``.

    Raises ``ApiError`` (400 malformed body, 413 past ``max_file_bytes``) or a 422
    ``RequestValidationError`` (no file, a missing ``required`` field, a field its
    parser refuses, as soon as that field has arrived); nothing is left on disk then.
    An empty file is stored like any other: the worker finds it is not media.
    """
    _, content_options = parse_options_header(request.headers.get("content-type"))
    boundary = content_options.get(b"boundary")
    if not boundary:
        raise _malformed("has no boundary in its Content-Type header")
    declared = request.headers.get("content-length", "")
    # Refused before reading: a client that sent ``Expect: 100-continue`` sends nothing.
    if declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(max_file_bytes)
    upload_id = storage.new_upload_id()
    final = storage.upload_path(storage_dir, upload_id)
    partial = final.with_name(f".{upload_id}.partial")
    reader = _FormReader(max_file_bytes, fields)
    handle = await run_in_threadpool(_open_partial, partial)
    try:
        await _read_body(request, reader, boundary, handle, max_file_bytes)
        if reader.filename is None:
            raise invalid_field(FILE_FIELD, "missing: send the video as the form's file part")
        for name in required:
            if name not in reader.values:
                raise invalid_field(name, "missing")
        await run_in_threadpool(_complete, handle, partial, final)
    except BaseException:
        # Shielded: a cancelled request must still not leave its partial file behind.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(_abandon, handle, partial)
        raise
    return ReceivedUpload(upload_id, final, reader.filename, reader.file_bytes, reader.values)


async def _read_body(
    request: Request, reader: _FormReader, boundary: bytes, handle: BinaryIO, max_file_bytes: int
) -> None:
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": reader.on_part_begin,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_end": reader.on_end,
        },
    )
    max_body_bytes = max_file_bytes + FORM_OVERHEAD_BYTES
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body_bytes:
                raise _too_large(max_file_bytes)
            parser.write(chunk)
            if len(reader.pending) >= WRITE_BUFFER_BYTES:
                await _flush(reader, handle)
        parser.finalize()
    except FormParserError as exc:
        raise _malformed(f"could not be parsed ({exc})") from None
    except ClientDisconnect:
        raise ApiError(
            400, "upload_incomplete", "The client disconnected before the upload finished."
        ) from None
    if not reader.ended:
        raise _malformed("ended before its closing boundary")
    await _flush(reader, handle)


async def _flush(reader: _FormReader, handle: BinaryIO) -> None:
    data, reader.pending = reader.pending, bytearray()
    if data:
        await run_in_threadpool(handle.write, data)
