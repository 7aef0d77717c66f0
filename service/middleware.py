"""ASGI middlewares: the request context (request id, access log), request metrics (answers,
time, body bytes read) and a quiet start-up failure."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
import uuid

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import ACCESS_LOGGER, REQUEST_ID
from service.metrics import Metrics
from service.state import Service

SEGMENT_PATH = "/segment"
V2_MODELS_PATH = "/v2/models/"
REQUEST_ID_HEADER = "x-request-id"
# A client's (or load balancer's) id is kept when it is short and made of characters that
# cannot forge a log line or a header: UUIDs, hex, AWS's "Root=1-...", base64.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")
# Routes machines poll: the orchestrator's probes and the Prometheus scrape. Each answers
# every few seconds per instance; their lines would bury the requests of users.
PROBE_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"})

logger = logging.getLogger("fcn.service")
access_logger = logging.getLogger(ACCESS_LOGGER)


def request_id(headers: Headers) -> str:
    """The client's X-Request-ID when sane, else a new one (uuid4, 32 hex digits)."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and SANE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestContext:
    """Outside everything (Starlette's 500 answer included): gives each HTTP request its id,
    sets it for every log line written while it is served, echoes it as X-Request-ID on the
    response, and writes the access log line once the response is sent.

    Probes and /metrics that succeed (status below 400) stay out of the access log unless
    ``log_probes``; their failures (a 503 that takes the instance out of the load balancer)
    are always logged.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool, log_probes: bool):
        self.app = app
        self.access_log = access_log
        self.log_probes = log_probes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)
        header = (REQUEST_ID_HEADER.encode(), rid.encode())
        status: int | None = None
        complete = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != REQUEST_ID_HEADER.encode()
                ]
                message = {**message, "headers": [*headers, header]}
            elif message["type"] == "http.response.body":
                complete = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, already answered with 500 (errors.handle_error): its traceback is logged
            # here, with the request id, rather than by the server. Re-raised only when the
            # answer is unfinished, for the server to close the connection.
            logger.exception(
                "unhandled error in %s %s; answered %s",
                scope["method"],
                urllib.parse.quote(scope["path"]),
                status or "nothing",
            )
            if not complete:
                raise
        finally:
            # An app that returned without answering gets the server's 500.
            self._log(scope, status or 500, started)
            REQUEST_ID.reset(token)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        """The access line: client, method, path, status and time to the response's end."""
        if not self.access_log:
            return
        method, path = scope["method"], scope["path"]
        if not self.log_probes and method == "GET" and path in PROBE_PATHS and status < 400:
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        path = urllib.parse.quote(path)  # decoded by the server: no newline reaches the log
        query = scope.get("query_string", b"").decode("latin-1")
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d %.1f ms',
            address,
            method,
            f"{path}?{query}" if query else path,
            scope.get("http_version", "1.1"),
            status,
            duration_ms,
            extra={
                "method": method,
                "path": path,
                "query": query,
                "status": status,
                "duration_ms": duration_ms,
                "client": address,
            },
        )


class RequestMetrics:
    """Counts the body bytes the app reads from every HTTP request and, for POST /segment and
    the Open Inference Protocol's infer (format ``v2``), the answers by status and format and
    their time."""

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

        path = scope["path"]
        infer = path.startswith(V2_MODELS_PATH) and path.endswith("/infer")
        if path != SEGMENT_PATH and not infer:
            await self.app(scope, receive_counted, send)
            return
        state = scope.setdefault("state", {})
        if infer:
            state["format"] = "v2"
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
