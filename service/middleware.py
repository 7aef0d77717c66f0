"""ASGI middlewares: request metrics (answers, time, body bytes read) and a quiet start-up
failure."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics
from service.state import Service

SEGMENT_PATH = "/segment"


class RequestMetrics:
    """Counts the body bytes the app reads from every HTTP request and, for POST /segment,
    the answers by status and format and their time."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def receive_counted() -> Message:
            # Counted as the app pulls them: a body refused before it is read adds nothing.
            message = await receive()
            if message["type"] == "http.request":
                self.metrics.body_bytes.inc(len(message.get("body", b"")))
            return message

        if scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive_counted, send)
            return
        state = scope.setdefault("state", {})
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_counted, send_with_status)
        finally:
            self.metrics.requests.labels(str(status), state.get("format", "none")).inc()
            self.metrics.request_seconds.observe(time.perf_counter() - started)


class QuietStartupFailure:
    """A StartupError reaches the server's log as our one line, no traceback."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.service.startup_error:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        await self.app(scope, receive, send_quietly)
