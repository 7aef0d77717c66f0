"""The app: ``create_app(settings)`` and its lifespan (load, warm up, drain).

Start with ``fcn-serve`` (service.cli) or ``uvicorn service.main:create_app --factory``;
both read FCN_*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from service import errors, logs, page, routes
from service.config import Settings, check_environment
from service.middleware import QuietStartupFailure, RequestContext, RequestMetrics
from service.state import Service

logger = logging.getLogger("fcn.service")
# What /docs shows above the routes (plain words: Swagger UI renders it as Markdown).
DESCRIPTION = (
    "Try POST /segment here: Try it out, choose an image, Execute. GET /v1/model says what "
    "the model knows, including its note: read it before trusting the labels.\n\n"
    'Every error is JSON, {"error": {"code": ..., "message": ...}}, with an honest status '
    '(the Open Inference Protocol routes under /v2 answer {"error": message}); each route '
    "lists the statuses it answers. The service's limits are FCN_* settings, and a refusal "
    "names the one at fault."
)


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


class App(FastAPI):
    """FastAPI with the request context (service.middleware.RequestContext) outermost, so
    that Starlette's own 500 answers and the tracebacks of bugs carry the request id too."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, as true as the routes declare it (errors.drop_default_422)."""
        if self.openapi_schema is None:
            self.openapi_schema = errors.drop_default_422(super().openapi())
        return self.openapi_schema

    def build_middleware_stack(self) -> ASGIApp:
        settings: Settings = self.state.service.settings
        return RequestContext(
            super().build_middleware_stack(),
            access_log=settings.access_log,
            log_probes=settings.log_probes,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving ``settings.model_path`` (settings default: the environment)."""
    if settings is None:  # from the environment, as `uvicorn --factory` builds it
        check_environment()
        settings = Settings()  # type: ignore[call-arg]
    logs.install(settings.log_format, settings.log_level)
    service = Service(settings)
    app = App(
        title="FCN semantic segmentation",
        summary="Fully Convolutional Networks on ONNX Runtime: POST an image, get its labels.",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        # FastAPI's Swagger UI and ReDoc load from a CDN: page.install serves Swagger UI offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    errors.install(app)
    app.include_router(routes.router)
    page.install(app)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(QuietStartupFailure, service=service)
    return app
