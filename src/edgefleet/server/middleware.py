"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the check-in hot path); the
body bound every service shares is ``web.bodylimit``."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.server.metrics import Metrics


class ResponseStatus:
    """``send``, noting the response's status on the way (500 until one is sent: an app
    that raised before answering)."""

    def __init__(self, send: Send) -> None:
        self.code = 500
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        finally:
            route: Any = scope.get("route")
            self.metrics.request(scope["method"], getattr(route, "path", "unmatched"), status.code,
                                 time.perf_counter() - start)
