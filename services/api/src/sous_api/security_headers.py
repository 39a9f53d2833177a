"""Security headers on every API response; a route's own (file downloads) take precedence."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: On every response: never sniff a type, never frame, never leak the URL as a referrer.
ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: On JSON: nothing in it may load or run anything, nor be framed.
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
#: Tenants' data under ``/v1`` is never kept by browsers or shared caches.
API_PREFIX = "/v1/"


class SecurityHeaders:
    """ASGI middleware adding the headers above unless the response already set them.

    The docs page (``/docs``) loads Swagger UI's scripts, so it gets no CSP; JSON does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"].startswith(API_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("Content-Security-Policy", JSON_CSP)
                if private:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
