"""Images larger than one pass: answered at their own resolution, through tiles."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.errors import StartupError
from service.main import create_app
from tests.images import encode, pattern
from tests.service.support import (
    ROOT,
    TEST_RUNTIME,
    assert_error,
    metric,
    metrics,
    png_labels,
    reference_labels,
    running,
    serve,
    settings,
    wait_metric,
)

pytestmark = pytest.mark.anyio
DEMO = ROOT / "models" / "demo" / "fcn8s.onnx"


@pytest.mark.slow
async def test_a_12_megapixel_photo_is_answered_at_full_size_by_default() -> None:
    # 4000 x 3000, padded 4200 x 3200 = 13.4 M pixels: more than one pass holds (8 M).
    image = pattern(3000, 4000, seed=3)
    jpeg = encode(image, "JPEG", quality=90)
    async with serve(DEMO) as client:
        response = await client.post(
            "/segment", content=jpeg, headers={"content-type": "image/jpeg"}
        )
        text = await metrics(client)
    assert response.status_code == 200, response.text
    labels = png_labels(response.content)
    assert labels.shape == (3000, 4000)
    assert response.headers["X-Tiles"] == "2"
    assert metric(text, "fcn_tiled_requests_total") == 1
    assert metric(text, "fcn_tiles_total") == 2
    # Against the whole image in one pass (which the service would not hold): the default
    # overlap changes labels only near the seam, and rarely.
    session = ort.InferenceSession(str(DEMO), providers=["CPUExecutionProvider"])
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert (labels == reference_labels(session, decoded)).mean() > 0.999


@pytest.mark.slow
async def test_tiles_at_the_exact_overlap_answer_the_same_bytes_as_one_pass(
    model_path: Path,
) -> None:
    png = encode(pattern(613, 777, seed=1), "PNG")
    async with serve(model_path) as client:
        whole = await client.post("/segment", files={"image": ("a.png", png)})
        exact = (await client.get("/v1/model")).json()["tiling"]["exact_overlap"]
        query = {"tile": "always", "tile_size": exact + 80, "tile_overlap": exact}
        tiled = await client.post("/segment", params=query, files={"image": ("a.png", png)})
        overlay = await client.post(
            "/segment",
            params={**query, "format": "overlay", "image_format": "png"},
            files={"image": ("a.png", png)},
        )
        # The confidence map is stitched tile by tile as the labels are.
        sure = {"format": "confidence"}
        sure_whole = await client.post("/segment", params=sure, files={"image": ("a.png", png)})
        sure_tiled = await client.post(
            "/segment", params={**query, **sure}, files={"image": ("a.png", png)}
        )
    assert whole.headers["X-Tiles"] == "1"
    assert int(tiled.headers["X-Tiles"]) >= 4
    assert tiled.content == whole.content
    assert sure_whole.headers["X-Tiles"] == "1"
    assert sure_tiled.headers["X-Tiles"] == tiled.headers["X-Tiles"]
    sure_maps = [
        np.asarray(Image.open(io.BytesIO(r.content)), np.int16) for r in (sure_whole, sure_tiled)
    ]
    if TEST_RUNTIME["runtime"] == "onnxruntime":
        assert sure_tiled.content == sure_whole.content
    else:  # OpenVINO's exp and sums round per shape: a tile's confidence may move by one unit
        assert np.abs(sure_maps[1] - sure_maps[0]).max() <= 1
    assert len(np.unique(sure_maps[0])) > 10
    assert overlay.status_code == 200
    assert Image.open(io.BytesIO(overlay.content)).size == (777, 613)


@pytest.mark.runtimes
async def test_small_requests_are_served_between_the_tiles_of_a_large_one(
    model_path: Path,
) -> None:
    large = encode(pattern(640, 960, seed=2), "PNG")
    small = encode(pattern(40, 50), "PNG")
    async with serve(model_path) as client:
        # About a hundred tiles, run one at a time on the CPU.
        query = {"tile": "always", "tile_size": 80, "tile_overlap": 0}
        big = asyncio.ensure_future(
            client.post("/segment", params=query, files={"image": ("big.png", large)})
        )
        await wait_metric(client, "fcn_tiles_total", 1)
        answer = await client.post("/segment", files={"image": ("small.png", small)})
        assert answer.status_code == 200
        # The small one was answered while the large one still had tiles to run.
        assert not big.done()
        tiles_then = metric(await metrics(client), "fcn_tiles_total")
        response = await big
    assert response.status_code == 200
    assert tiles_then < int(response.headers["X-Tiles"])
    assert png_labels(response.content).shape == (640, 960)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"tile": "sometimes"}, "tile"),
        ({"tile_size": 0}, "tile_size"),
        ({"tile_size": 3000}, "?tile_size=: a tile of 3000x3000 is 10240000 pixels"),
        ({"tile_size": 150}, "?tile_size=: tiles of 150 pixels cannot overlap by 128"),
        ({"tile_overlap": 3000}, "?tile_overlap=: tiles of 2628 pixels cannot overlap by 3000"),
        ({"tile_overlap": -1}, "tile_overlap"),
    ],
)
async def test_bad_tile_parameters_are_422(
    model_path: Path, query: dict[str, object], words: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(
            "/segment", params=query, files={"image": ("a.png", encode(pattern(30, 40), "PNG"))}
        )
        error = assert_error(response, 422, "invalid_parameter")
        assert words in error["message"], error["message"]
        # The process goes on.
        ok = await client.post(
            "/segment", files={"image": ("a.png", encode(pattern(30, 40), "PNG"))}
        )
        assert ok.status_code == 200


@pytest.mark.slow
async def test_tile_settings_that_cannot_work_stop_the_start(model_path: Path) -> None:
    app = create_app(settings(model_path, tile_size=3000))
    with pytest.raises(StartupError, match="FCN_TILE_SIZE=3000: a tile of 3000x3000"):
        async with app.router.lifespan_context(app):
            pass


async def test_never_tiling_refuses_what_one_pass_cannot_hold(model_path: Path) -> None:
    png = encode(pattern(300, 400), "PNG")
    async with serve(model_path, max_model_pixels=200_000, tiling="never") as client:
        refused = await client.post("/segment", files={"image": ("a.png", png)})
        allowed = await client.post(
            "/segment", params={"tile": "auto"}, files={"image": ("a.png", png)}
        )
    error = assert_error(refused, 413, "image_too_large")
    assert "tiling is off (?tile=never or FCN_TILING)" in error["message"]
    assert allowed.status_code == 200
    assert int(allowed.headers["X-Tiles"]) > 1


@pytest.mark.runtimes
async def test_a_shutdown_lets_a_tiled_request_run_its_remaining_tiles(model_path: Path) -> None:
    large = encode(pattern(400, 560, seed=4), "PNG")
    query = {"tile": "always", "tile_size": 80, "tile_overlap": 0}
    app = create_app(settings(model_path))
    async with running(app) as client:
        tiled = asyncio.ensure_future(
            client.post("/segment", params=query, files={"image": ("big.png", large)})
        )
        await wait_metric(client, "fcn_tiles_total", 1)
    # The lifespan is over: the drain waited for the tiles still to run, not only the one
    # queued when it began.
    response = await tiled
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Tiles"]) > 20
    assert png_labels(response.content).shape == (400, 560)
