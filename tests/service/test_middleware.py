"""The ASGI middlewares: request counts and times, the body bytes the app reads, and a start-up
failure that reaches the server as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.main import create_app
from tests.service.support import PNG, asgi_post, metric, metrics, running, settings

pytestmark = pytest.mark.anyio


async def test_answers_are_counted_with_the_body_bytes_read(model_path: Path) -> None:
    app = create_app(settings(model_path))
    async with running(app) as client:
        before = metric(await metrics(client), "fcn_request_body_bytes_total")
        chunks = [PNG[:100], PNG[100:]]
        status, _, _ = await asgi_post(app, chunks, [(b"content-type", b"image/png")])
        assert status == 499  # asgi_post's client leaves once its body is sent
        ok = await client.post(
            "/segment?format=json", content=PNG, headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200
        # A body of a type the service cannot read is refused unread.
        status, _, pulled = await asgi_post(app, [PNG], [(b"content-type", b"text/plain")])
        assert (status, pulled) == (415, 0)
        text = await metrics(client)
    assert metric(text, "fcn_request_body_bytes_total") - before == 2 * len(PNG)
    assert metric(text, "fcn_requests_total", status="200", format="json") == 1
    assert metric(text, "fcn_requests_total", status="415", format="png") == 1
    assert metric(text, "fcn_requests_total", status="499", format="png") == 1
    assert metric(text, "fcn_request_duration_seconds_count") == 3


async def test_a_startup_failure_reaches_the_server_as_one_line(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path / "absent.onnx"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(Exception, match="no such model file"):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    # The server prints its own "Application startup failed" and no traceback of ours: the
    # lifespan logged the one line "cannot start: ...".
    assert sent == [{"type": "lifespan.startup.failed", "message": ""}]
