"""The browser page at ``/`` (static files shipped in ``service/static``) and ``/docs``: an
API reference rendered from the app's own OpenAPI document, so both work with no network."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Nothing but this origin: the page must work offline, and a browser refuses any slip.
POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}
METHODS = ("get", "post", "put", "patch", "delete")


def install(app: FastAPI) -> None:
    """Serve the page at ``/``, its assets under ``/static`` and the reference at ``/docs``.

    The app must be created with ``docs_url=None, redoc_url=None``: FastAPI's Swagger UI
    and ReDoc load their scripts from a CDN and show a blank page offline.
    """
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_reference(app.openapi(), app.openapi_url), headers=HEADERS)


def _parameter(parameter: dict[str, Any]) -> str:
    schema = parameter.get("schema", {})
    # Optional parameters are anyOf [the type, null]: describe the type.
    kind = next((c for c in schema.get("anyOf", []) if c.get("type") != "null"), schema)
    if "enum" in kind:
        values = " | ".join(map(str, kind["enum"]))
    else:
        bounds = [f"{k} {kind[k]}" for k in ("minimum", "maximum") if k in kind]
        values = ", ".join([kind.get("type", ""), *bounds])
    if "default" in schema:
        values += f"; default {schema['default']}"
    return (
        f"<tr><td><code>{html.escape(parameter['name'])}</code></td>"
        f"<td>{html.escape(values)}</td>"
        f"<td>{html.escape(parameter.get('description', ''))}</td></tr>"
    )


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    parts = [
        f"<section><h2><code>{method.upper()} {html.escape(path)}</code></h2>",
        f"<p>{html.escape(operation.get('description') or operation.get('summary', ''))}</p>",
    ]
    parameters = operation.get("parameters", [])
    if parameters:
        parts.append(
            "<table><thead><tr><th>query parameter</th><th>values</th><th>meaning</th></tr></thead>"
            f"<tbody>{''.join(_parameter(p) for p in parameters)}</tbody></table>"
        )
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        types = ", ".join(f"<code>{html.escape(t)}</code>" for t in body)
        parts.append(f"<p>Body: {types}.</p>")
    statuses = ", ".join(html.escape(str(code)) for code in operation.get("responses", {}))
    parts.append(f"<p>Answers: {statuses}.</p></section>")
    return "".join(parts)


def render_reference(openapi: dict[str, Any], openapi_url: str | None) -> str:
    """A self-contained HTML page listing every route of ``openapi`` (no external asset)."""
    info = openapi.get("info", {})
    title = html.escape(info.get("title", "API"))
    sections = [
        _operation(path, method, operation)
        for path, item in openapi.get("paths", {}).items()
        for method, operation in item.items()
        if method in METHODS
    ]
    source = (
        f'<a href="{html.escape(openapi_url)}">{html.escape(openapi_url)}</a>'
        if openapi_url
        else "no OpenAPI document"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}: API reference</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css">'
        '</head><body><main class="reference">'
        f"<h1>{title}: API reference</h1>"
        f"<p>{html.escape(info.get('summary', ''))} Version {html.escape(info.get('version', ''))}."
        f" The machine-readable description is {source} (OpenAPI"
        f" {html.escape(openapi.get('openapi', ''))}); load it into any OpenAPI tool."
        ' Try <code>POST /segment</code> in the browser on <a href="/">the page</a>.</p>'
        f"{''.join(sections)}</main></body></html>"
    )
