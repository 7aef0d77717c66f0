"""The browser page at ``/`` (static files shipped in ``service/static``) and the interactive
API reference at ``/docs``: Swagger UI ("Try it out" on every route) on the app's own OpenAPI
document. Both work with no network, and neither runs a script that is not a file of ours.

Swagger UI's files come from ``fastapi-offline``, which ships them inside its wheel. Chosen over
``swagger-ui-bundle`` because that package's newest release (1.1) ships Swagger UI 4.15, which
cannot render the OpenAPI 3.1 documents FastAPI writes; fastapi-offline ships Swagger UI 5.
Only its files are used: its ``FastAPIOffline`` factory (like FastAPI's ``get_swagger_ui_html``)
writes the start-up script inline, which a strict Content-Security-Policy refuses, so ``/docs``
is our ``docs.html`` and its start-up script is ``docs.js``, both served from here. ReDoc is
not served: Swagger UI does what it does and can also send requests.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Swagger UI's script and stylesheet, as the fastapi-offline wheel ships them.
SWAGGER_UI = Path(str(importlib.resources.files("fastapi_offline") / "static"))
SWAGGER_UI_URL = "/static/swagger-ui"
# Nothing but this origin: the page must work offline, and a browser refuses any slip. /docs
# keeps the same policy: Swagger UI's script and ours are files, its requests go to /.
POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}


def install(app: FastAPI) -> None:
    """Serve the page at ``/``, its assets under ``/static`` and Swagger UI at ``/docs``.

    The app must be created with ``docs_url=None, redoc_url=None``: FastAPI's own Swagger UI
    and ReDoc load their scripts from a CDN and show a blank page offline.
    """
    # Before /static, which would otherwise take these paths.
    app.mount(SWAGGER_UI_URL, StaticFiles(directory=SWAGGER_UI), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html", headers=HEADERS)
