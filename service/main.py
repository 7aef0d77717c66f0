"""The app: ``create_app(settings)``, its lifespan (load, warm up, drain) and ``fcn-serve``.

Start with ``fcn-serve`` or ``uvicorn service.main:create_app --factory``; both read FCN_*.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import FrameType
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors, routes
from service.config import Settings
from service.metrics import Metrics
from service.state import Service

logger = logging.getLogger("fcn.service")

SEGMENT_PATH = "/segment"


def _chain_signals(on_signal: Callable[[], None], delay_s: float) -> Callable[[], None]:
    """Run ``on_signal`` before the server's SIGTERM/SIGINT handlers; hold SIGTERM's ``delay_s``.

    Servers (uvicorn) install their handlers before the lifespan starts; when none is
    installed there is nothing to chain. Returns the function that restores them.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal()
        original = previous[signum]
        if signum == signal.SIGTERM and delay_s > 0:
            loop.call_soon_threadsafe(loop.call_later, delay_s, original, signum, None)
        else:
            original(signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if callable(current):
            previous[sig] = current
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, original in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, original)

    return restore


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model before serving; warm up while /livez already answers; drain at exit."""
    service: Service = app.state.service
    try:
        await service.start()
    except errors.StartupError as exc:
        logger.error("cannot start: %s", exc)
        service.startup_error = exc
        raise
    restore = _chain_signals(service.drain, service.settings.drain_delay_s)
    warm_up = asyncio.get_running_loop().create_task(service.warm_up(), name="fcn-warm-up")
    try:
        yield
    finally:
        restore()
        warm_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm_up
        await service.stop()


class RequestMetrics:
    """ASGI middleware counting POST /segment answers by status and format, and their time."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive, send)
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
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(str(status), state.get("format", "none")).inc()
            self.metrics.request_seconds.observe(time.perf_counter() - started)


class QuietStartupFailure:
    """ASGI middleware: a StartupError reaches the server's log as our one line, no traceback."""

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


def _configure_logging(level: str) -> None:
    """Show the service's own lines at ``level``, also when nothing else configured logging."""
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving ``settings.model_path`` (settings default: the environment)."""
    settings = settings if settings is not None else Settings()  # type: ignore[call-arg]
    _configure_logging(settings.log_level)
    service = Service(settings)
    app = FastAPI(
        title="FCN semantic segmentation",
        summary="Fully Convolutional Networks on ONNX Runtime: POST an image, get its labels.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    errors.install(app)
    app.include_router(routes.router)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(QuietStartupFailure, service=service)
    return app


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for ``settings``."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        # Load balancers keep idle connections open (AWS ALB: 60 s); if the server closed
        # them first, a request sent just then would get a 502.
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": math.ceil(settings.drain_timeout_s),
    }


# Flags of ``fcn-serve``: each sets its FCN_* variable, so uvicorn's workers see it too.
FLAGS = {"model": "model_path", "host": "host", "port": "port", "workers": "workers"}


def _as_environment(value: object) -> str:
    """A default as one would write it in the environment: ``375x500``, ``a,b``, ``true``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) for v in value):
            return ",".join("x".join(str(n) for n in v) for v in value) or "empty"
        return ",".join(str(v) for v in value) or "empty"
    return str(value) if value != "" else "empty"


def _argument_parser() -> argparse.ArgumentParser:
    lines = []
    for name, field in Settings.model_fields.items():
        default = "" if field.is_required() else f" [{_as_environment(field.default)}]"
        lines.append(f"  FCN_{name.upper():<26} {field.description}{default}")
    parser = argparse.ArgumentParser(
        prog="fcn-serve",
        description="Serve an FCN ONNX model over HTTP (POST /segment) with uvicorn. Every "
        "setting is an FCN_* environment variable; the flags below override theirs.",
        epilog="settings (environment):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", metavar="PATH", help="the ONNX file (FCN_MODEL_PATH)")
    parser.add_argument("--host", help="address to bind (FCN_HOST)")
    parser.add_argument("--port", help="port to listen on (FCN_PORT)")
    parser.add_argument("--workers", help="server processes (FCN_WORKERS)")
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    """``fcn-serve``: serve the model with uvicorn; every setting from FCN_*, four by flag."""
    args = _argument_parser().parse_args(argv)
    for flag, name in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"FCN_{name.upper()}"] = str(value)
    try:
        settings = Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"FCN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            + (" (set it, or pass --model PATH)" if e["loc"] == ("model_path",) else "")
            for e in exc.errors()
        )
        print(f"fcn-serve: bad settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    import uvicorn

    uvicorn.run("service.main:create_app", **server_options(settings))


if __name__ == "__main__":
    run()
