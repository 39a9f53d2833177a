"""Refuse request bodies larger than the configured limit with a 413, before reading them."""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sous_api.errors import error_body


class BodyTooLarge(HTTPException):
    """Raised while reading a body without ``Content-Length`` once it passes the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_message(max_bytes))


def too_large_message(max_bytes: int) -> str:
    return f"The request body is larger than the limit of {max_bytes} bytes."


class BodySizeLimit:
    """ASGI middleware: checks ``Content-Length`` up front and counts chunked bodies.

    ``POST`` multipart bodies to ``upload_paths`` pass through untouched: their route
    streams them to disk and enforces a limit of its own (``SOUS_MAX_UPLOAD_BYTES``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self._is_upload(scope, headers):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._reject(send)

    def _is_upload(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        if scope.get("method") != "POST" or scope.get("path") not in self.upload_paths:
            return False
        media_type = headers.get(b"content-type", b"").partition(b";")[0]
        return media_type.strip().lower() == b"multipart/form-data"

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            error_body("payload_too_large", too_large_message(self.max_bytes))
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
