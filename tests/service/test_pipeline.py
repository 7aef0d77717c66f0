"""One request end to end in the real app (httpx over ASGI) on the tiny exported model:
every format and input mode, every image kind, reduced sizes, batching, timeouts and gone
clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from contract.palette import color_table
from service import imaging
from service.main import create_app
from tests.images import encode, pattern
from tests.service.support import (
    IMAGE,
    PALETTE,
    PNG,
    asgi_post,
    assert_error,
    busy,
    metric,
    metrics,
    png_labels,
    reference_labels,
    rle_decode,
    running,
    serve,
    settings,
)

pytestmark = pytest.mark.anyio


def post_kwargs(mode: str, data: bytes, media: str = "image/png") -> dict[str, Any]:
    if mode == "multipart":
        return {"files": {"image": ("picture", data, media)}}
    content_type = media if mode == "raw" else "application/octet-stream"
    return {"content": data, "headers": {"content-type": content_type}}


@pytest.mark.parametrize("mode", ["raw", "octet-stream", "multipart"])
@pytest.mark.parametrize(
    ("query", "media_type"),
    [
        ("", "image/png"),
        ("?format=png", "image/png"),
        ("?format=overlay", "image/png"),
        ("?format=overlay&image_format=jpeg&alpha=0.25", "image/jpeg"),
        ("?format=json", "application/json"),
        ("?format=json&label_encoding=png", "application/json"),
    ],
    ids=["default", "png", "overlay-png", "overlay-jpeg", "json-rle", "json-png"],
)
async def test_every_format_and_input_mode(
    model_path: Path, session: ort.InferenceSession, mode: str, query: str, media_type: str
) -> None:
    expected = reference_labels(session, IMAGE)
    async with serve(model_path) as client:
        response = await client.post(f"/segment{query}", **post_kwargs(mode, PNG))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["x-model-version"].startswith("fcn8s-")
    for name in ("x-queue-time-ms", "x-inference-time-ms", "x-decode-time-ms"):
        assert float(response.headers[name]) >= 0
    if media_type == "application/json":
        body = response.json()
        assert (body["width"], body["height"]) == (61, 45)
        assert body["model"]["arch"] == "fcn8s"
        ids = [c["id"] for c in body["classes"]]
        assert ids == sorted(np.unique(expected).tolist())
        assert sum(c["pixels"] for c in body["classes"]) == 45 * 61
        for entry in body["classes"]:
            assert entry["name"] == f"class{entry['id']}"
            assert entry["fraction"] == pytest.approx(entry["pixels"] / (45 * 61), abs=1e-6)
            if "label_encoding=png" in query:
                continue
            np.testing.assert_array_equal(rle_decode(entry["rle"]), expected == entry["id"])
        if "label_encoding=png" in query:
            np.testing.assert_array_equal(png_labels(base64.b64decode(body["label_map"])), expected)
        return
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (61, 45)
    if "overlay" not in query:
        np.testing.assert_array_equal(png_labels(response.content), expected)
        assert picture.getpalette()[:15] == [v for color in PALETTE for v in color]
    elif media_type == "image/png":
        table = color_table(PALETTE)
        blended = 0.5 * IMAGE + 0.5 * table[expected]
        assert np.abs(np.asarray(picture).astype(float) - blended).max() <= 1


def _kinds() -> list[tuple[str, bytes, np.ndarray]]:
    """(name, encoded bytes, the RGB pixels the service must see)."""
    rgb = pattern(30, 40, seed=3)
    gray = rgb[..., 1]
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:10] = 0
    over_white = rgb.copy()
    over_white[:10] = 255
    gray_white = np.repeat(gray[..., None], 3, 2).copy()
    gray_white[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(rgb, "JPEG", quality=90)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    indexed = Image.fromarray(rgb).quantize(colors=15)
    indices = np.asarray(indexed).copy()
    indices[:10] = 15
    palette_picture = Image.fromarray(indices)
    palette_picture.putpalette([*indexed.getpalette()[:45], 0, 0, 0])
    palette_rgb = np.asarray(palette_picture.convert("RGB")).copy()
    palette_rgb[:10] = 255
    return [
        ("jpeg", jpeg, np.asarray(Image.open(io.BytesIO(jpeg)))),
        ("png", encode(rgb, "PNG"), rgb),
        ("webp", encode(rgb, "WEBP", lossless=True), rgb),
        ("bmp", encode(rgb, "BMP"), rgb),
        ("tiff", encode(rgb, "TIFF"), rgb),
        ("gif", encode(rgb, "GIF"), rgb),
        ("exif-rotated", encode(rgb, "PNG", exif=exif), np.rot90(rgb, -1)),
        ("grayscale", encode(gray, "PNG"), np.repeat(gray[..., None], 3, 2)),
        ("16-bit", encode(gray.astype(np.uint16) * 256, "PNG"), np.repeat(gray[..., None], 3, 2)),
        ("cmyk", encode(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))),
        ("rgba", encode(np.dstack([rgb, alpha]), "PNG"), over_white),
        ("la", encode(np.dstack([gray, alpha]), "PNG"), gray_white),
        ("palette-transparent", encode(palette_picture, "PNG", transparency=15), palette_rgb),
    ]


async def test_every_image_kind_is_segmented_as_its_rgb_pixels(
    model_path: Path, session: ort.InferenceSession
) -> None:
    async with serve(model_path) as client:
        for name, data, rgb in _kinds():
            response = await client.post("/segment", files={"image": (name, data, "image/x")})
            assert response.status_code == 200, (name, response.text)
            labels = png_labels(response.content)
            assert labels.shape == rgb.shape[:2], name
            np.testing.assert_array_equal(labels, reference_labels(session, rgb), err_msg=name)


async def test_large_images_can_be_segmented_at_a_reduced_size(
    model_path: Path, session: ort.InferenceSession
) -> None:
    image = pattern(64, 96, seed=5)
    reduced = reference_labels(session, imaging.shrink(image, 48))
    expected = imaging.enlarge(reduced, 64, 96)
    async with serve(model_path, max_side=48) as client:
        by_setting = await client.post("/segment", files={"image": ("a", encode(image, "PNG"))})
    async with serve(model_path) as client:
        by_request = await client.post(
            "/segment?max_side=48", files={"image": ("a", encode(image, "PNG"))}
        )
        full = await client.post("/segment", files={"image": ("a", encode(image, "PNG"))})
    for response in (by_setting, by_request):
        assert response.status_code == 200
        np.testing.assert_array_equal(png_labels(response.content), expected)
    np.testing.assert_array_equal(png_labels(full.content), reference_labels(session, image))


@pytest.mark.slow
@pytest.mark.runtimes
async def test_a_model_with_scores_serves_the_same_labels(
    model_path: Path, model_with_scores_path: Path
) -> None:
    async with serve(model_with_scores_path) as client:
        scored = await client.post("/segment", files={"image": ("a", PNG)})
        info = (await client.get("/v1/model")).json()
    async with serve(model_path) as client:
        plain = await client.post("/segment", files={"image": ("a", PNG)})
    assert info["outputs"] == ["labels", "confidence", "scores"]
    assert scored.status_code == plain.status_code == 200
    assert scored.content == plain.content


@pytest.mark.runtimes
async def test_a_request_over_the_timeout_is_504_and_the_service_goes_on(
    model_path: Path, big_image: bytes
) -> None:
    # (Requests that time out while queued are dropped before the model: test_batching.py.)
    async with serve(model_path, request_timeout_s=0.1) as client:
        late = await client.post(
            "/segment", content=big_image, headers={"content-type": "image/bmp"}
        )
        assert "0.1 s" in assert_error(late, 504, "timeout")["message"]
        while metric(await metrics(client), "fcn_batches_running") > 0:
            await asyncio.sleep(0.01)
        small = encode(pattern(16, 16), "PNG")
        assert (await client.post("/segment", files={"image": ("a", small)})).status_code == 200
        text = await metrics(client)
    assert metric(text, "fcn_requests_total", status="504", format="png") == 1


@pytest.mark.slow
async def test_requests_of_gone_clients_are_dropped_before_the_model(
    model_path: Path, big_image: bytes
) -> None:
    app = create_app(settings(model_path))
    async with running(app) as client:
        blocker = await busy(client, big_image)
        status, body, _ = await asgi_post(app, [PNG], [(b"content-type", b"image/png")])
        assert status == 499
        assert json.loads(body)["error"]["code"] == "client_closed_request"
        assert (await blocker).status_code == 200
        text = await metrics(client)
    assert metric(text, "fcn_requests_dropped_total", reason="disconnected") == 1
    assert metric(text, "fcn_batch_size_count") == 1


@pytest.mark.slow
@pytest.mark.runtimes
async def test_concurrent_same_size_requests_run_as_one_batch_with_exact_labels(
    model_path: Path, big_image: bytes
) -> None:
    images = [encode(pattern(40, 52, seed=s), "PNG") for s in range(4)]
    async with serve(model_path, max_batch_size=4) as client:
        blocker = await busy(client, big_image)
        batched = await asyncio.gather(
            *(client.post("/segment", files={"image": ("a", image)}) for image in images)
        )
        await blocker
        text = await metrics(client)
        singles = [await client.post("/segment", files={"image": ("a", im)}) for im in images]
    assert [r.headers["x-batch-size"] for r in batched] == ["4"] * 4
    assert [r.headers["x-batch-size"] for r in singles] == ["1"] * 4
    # The blocker's batch of 1, then one batch of 4.
    assert metric(text, "fcn_batch_size_count") == 2
    assert metric(text, "fcn_batch_size_sum") == 5
    assert metric(text, "fcn_batch_size_bucket", le="2.0") == 1
    for together, alone in zip(batched, singles, strict=True):
        assert together.content == alone.content
