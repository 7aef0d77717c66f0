"""The error contract: every refusal is {"error": {"code", "message"}} with an honest status,
the image's own faults phrased by ``contract.decode``, and the process goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from contract.decode import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from service import errors, pipeline
from service.main import create_app
from tests.images import encode, pattern, png_header_only
from tests.service.support import (
    IMAGE,
    PNG,
    assert_error,
    metric,
    metrics,
    running,
    serve,
    settings,
)

pytestmark = pytest.mark.anyio


def raw(data: bytes, media: str | None) -> dict[str, Any]:
    return {"content": data, "headers": {} if media is None else {"content-type": media}}


CUT_MULTIPART = b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc'


FORMATS = "JPEG, PNG, WEBP, BMP, TIFF, GIF"
# name: (request, status, code, the message's start)
BAD_BODIES = {
    "garbage": (
        raw(b"\xff\xd8\xff\xe0garbage", "image/jpeg"),
        400,
        "bad_image",
        "the image has an unreadable JPEG header",
    ),
    "truncated": (
        raw(PNG[: len(PNG) // 2], "image/png"),
        400,
        "bad_image",
        "the image cannot be decoded as PNG",
    ),
    "empty": (raw(b"", "image/png"), 400, "bad_image", "the image is empty; an image has bytes"),
    "multipart-cut": (
        raw(CUT_MULTIPART, "multipart/form-data; boundary=x"),
        400,
        "bad_image",
        "the multipart/form-data body ends before its closing boundary",
    ),
    "text": (raw(b"hello", "text/plain"), 415, "unsupported_media_type", "cannot read a body"),
    "no-type": (raw(PNG, None), 415, "unsupported_media_type", "cannot read a body"),
    "ppm": (
        raw(encode(IMAGE, "PPM"), "image/x-portable-pixmap"),
        415,
        "unsupported_media_type",
        f"the image is not an image format we read ({FORMATS})",
    ),
    "no-image-field": (
        {"files": {"file": ("a.png", PNG)}},
        422,
        "invalid_parameter",
        "the multipart/form-data body has no field named 'image'",
    ),
    # Past Pillow's bomb threshold (raised to FCN_MAX_PIXELS): the limit in force, in our words.
    "bomb": (
        raw(png_header_only(12_000, 12_000), "image/png"),
        413,
        "image_too_large",
        "the image is 144000000 pixels; the limit is 100000000 pixels, set by FCN_MAX_PIXELS",
    ),
    # 230 bytes, 50,000 pixels; conv1's padding makes it 10 million at the model, which
    # one pass cannot hold, and tiles are forbidden.
    "thin": (
        {**raw(png_header_only(50_000, 1), "image/png"), "params": {"tile": "never"}},
        413,
        "image_too_large",
        "the image would run at the model on 50000x1, padded by 100",
    ),
}


@pytest.mark.parametrize(("kwargs", "status", "code", "words"), BAD_BODIES.values(), ids=BAD_BODIES)
async def test_bad_bodies_get_their_status_and_json(
    model_path: Path, kwargs: dict[str, Any], status: int, code: str, words: str
) -> None:
    async with serve(model_path) as client:
        error = assert_error(await client.post("/segment", **kwargs), status, code)
        assert error["message"].startswith(words), error["message"]
        # The process goes on.
        assert (await client.post("/segment", files={"image": ("a", PNG)})).status_code == 200


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (CorruptImageError("is empty; an image has bytes"), 400, "bad_image"),
        (UnsupportedImageError("is not an image format we read"), 415, "unsupported_media_type"),
        (ImageTooLargeError("is 9x9 = 81 pixels; the limit is 80"), 413, "image_too_large"),
    ],
    ids=["corrupt", "unsupported", "too-large"],
)
async def test_the_contracts_image_errors_have_one_row_each_in_the_table(
    error: Exception, status: int, code: str
) -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/decode")
    async def decode() -> None:
        raise error

    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/decode")
    assert assert_error(response, status, code)["message"] == f"the image {error}"


async def test_routing_errors_are_json_too(model_path: Path) -> None:
    async with serve(model_path) as client:
        assert_error(await client.get("/nope"), 404, "not_found")
        assert_error(await client.get("/segment"), 405, "method_not_allowed")
        assert_error(await client.delete("/livez"), 405, "method_not_allowed")
        response = await client.post(
            "/segment", content=PNG, headers={"content-type": "image/png", "accept": "text/html"}
        )
        assert_error(response, 406, "not_acceptable")


async def test_size_limits_are_413(model_path: Path) -> None:
    big = encode(pattern(40, 40), "BMP")
    async with serve(model_path, max_upload_bytes=len(big) - 1, max_pixels=30 * 30) as client:
        response = await client.post("/segment", content=big, headers={"content-type": "image/bmp"})
        assert "limit" in assert_error(response, 413, "body_too_large")["message"]
        # The limit in force and the setting that sets it, whole or in tiles.
        for query in ("", "?tile=always&tile_size=16"):
            response = await client.post(
                f"/segment{query}", files={"image": ("a", encode(pattern(31, 30), "PNG"))}
            )
            assert assert_error(response, 413, "image_too_large")["message"] == (
                "the image is 30x31 = 930 pixels; the limit is 900 pixels, set by FCN_MAX_PIXELS"
            )
        ok = await client.post("/segment", files={"image": ("a", encode(pattern(30, 30), "PNG"))})
        assert ok.status_code == 200


async def test_a_failing_batch_is_a_json_500_and_the_service_goes_on(
    failing_model_path: Path,
) -> None:
    async with serve(failing_model_path, warmup_sizes="2x8") as client:
        wrong = await client.post("/segment", files={"image": ("a", encode(pattern(4, 5), "PNG"))})
        message = assert_error(wrong, 500, "inference_failed")["message"]
        assert "batch of 1 image(s) of 5x4" in message
        right = await client.post(
            "/segment?format=json",
            files={"image": ("a", encode(np.full((3, 8, 3), 200, np.uint8), "PNG"))},
        )
        assert right.status_code == 200
        assert right.json()["classes"] == [
            {
                "id": 3,
                "name": "bright",
                "pixels": 24,
                "fraction": 1.0,
                "rle": {"size": [3, 8], "counts": [0, 24]},
            }
        ]
        text = await metrics(client)
        assert metric(text, "fcn_batch_failures_total") == 1
        assert metric(text, "fcn_requests_total", status="500", format="png") == 1


async def test_an_unexpected_error_is_a_json_500_and_the_service_stays_ready(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug in the encoder")

    app = create_app(settings(model_path, max_queue=1))
    async with running(app) as client:
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "encode_labels", broken)
            failed = await client.post("/segment", files={"image": ("a", PNG)})
        message = assert_error(failed, 500, "internal_error")["message"]
        assert "bug" not in message  # details go to the log, not to clients
        assert (await client.get("/readyz")).status_code == 200
        # Nothing was held back: the one place in the queue, the image budget.
        assert (await client.post("/segment", files={"image": ("a", PNG)})).status_code == 200
        budget = app.state.service.segmenter.budget
        await asyncio.wait_for(budget.acquire(budget.pixels), 1)  # all of it, at once
        budget.release(budget.pixels)
        text = await metrics(client)
    assert metric(text, "fcn_requests_total", status="500", format="png") == 1
