"""Count every HTTP request and time it, labelled by route template, method and status."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sous_core import metrics

#: Label for requests that matched no route: one series, whatever the path was.
UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """Pure ASGI middleware: the latency runs until the response's last byte is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            labels = {
                "route": route_template(scope),
                "method": scope["method"],
                "status": str(status),
            }
            metrics.API_REQUESTS.labels(**labels).inc()
            metrics.API_REQUEST_DURATION.labels(**labels).observe(time.perf_counter() - started)
