"""Where the service is in its life: readiness after the warm-up, draining after the
lifespan, and liveness failing while an inference is stuck."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from tests.service.support import (
    PNG,
    assert_error,
    busy,
    metric,
    metrics,
    running,
    serve,
    settings,
)

pytestmark = pytest.mark.anyio


async def test_readiness_waits_for_the_warm_up_and_ends_with_draining(model_path: Path) -> None:
    app = create_app(settings(model_path, warmup_sizes="1600x1600"))
    async with running(app, ready=False) as client:
        for path in ("/readyz", "/v2/health/ready"):
            response = await client.get(path)
            assert response.status_code == 503
            assert response.json()["status"] == "warming_up"
            assert response.headers["retry-after"] == "1"
        for path in ("/livez", "/v2/health/live"):
            assert (await client.get(path)).status_code == 200
        early = await client.post("/segment", files={"image": ("a", PNG)})
        assert_error(early, 503, "not_ready")
        assert early.headers["retry-after"] == "1"
        assert metric(await metrics(client), "fcn_ready") == 0
        deadline = time.monotonic() + 30
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await client.get("/v2/health/ready")).json()["status"] == "ready"
        assert metric(await metrics(client), "fcn_ready") == 1
        assert (await client.post("/segment", files={"image": ("a", PNG)})).status_code == 200
    # After the lifespan: draining.
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (503, "draining")
        assert (await client.get("/livez")).status_code == 200


@pytest.mark.slow
async def test_a_stuck_inference_fails_the_liveness_probe(
    model_path: Path, big_image: bytes
) -> None:
    async with serve(model_path, stuck_after_s=0.01) as client:
        blocker = await busy(client, big_image)
        seen: list[tuple[int, str]] = []
        while not blocker.done():
            response = await client.get("/livez")
            seen.append((response.status_code, response.json()["status"]))
            running_s = metric(await metrics(client), "fcn_batch_running_seconds")
            if seen[-1][0] == 503:
                break
        assert seen[-1] == (503, "stuck"), seen
        assert running_s > 0.01
        assert (await blocker).status_code == 200
        assert (await client.get("/livez")).status_code == 200
        assert metric(await metrics(client), "fcn_batch_running_seconds") == 0
