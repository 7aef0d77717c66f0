"""The real app in process (httpx over ASGI) on the tiny exported model: formats, input modes,
image kinds, every error status, readiness, batching, probes under load, metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from PIL import Image

from service import imaging
from service.errors import StartupError
from service.main import create_app
from service.runtime import available_cpus
from tests.service.support import (
    PALETTE,
    encode,
    metric,
    metrics,
    pattern,
    png_labels,
    reference_labels,
    rle_decode,
    running,
    serve,
    settings,
    wait_metric,
)
from tests.service.test_imaging import png_header_only

pytestmark = pytest.mark.anyio

IMAGE = pattern(45, 61)
PNG = encode(IMAGE, "PNG")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error body: {"error": {"code", "message"}} and the right status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


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
        table = imaging.color_table(PALETTE, 5)
        blended = 0.5 * IMAGE + 0.5 * table[expected]
        assert np.abs(np.asarray(picture).astype(float) - blended).max() <= 1


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/json", "application/json"),
        ("image/jpeg", "image/jpeg"),
        ("image/png", "image/png"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "image/png"),
        ("image/png;q=0.5, application/json;q=0.9", "application/json"),
    ],
)
async def test_the_accept_header_selects_the_format(
    model_path: Path, accept: str, media_type: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(
            "/segment", content=PNG, headers={"content-type": "image/png", "accept": accept}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        # An explicit ?format= wins over Accept.
        explicit = await client.post(
            "/segment?format=png",
            content=PNG,
            headers={"content-type": "image/png", "accept": accept},
        )
        assert explicit.headers["content-type"] == "image/png"


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


async def test_a_model_with_scores_serves_the_same_labels(
    model_path: Path, model_with_scores_path: Path
) -> None:
    async with serve(model_with_scores_path) as client:
        scored = await client.post("/segment", files={"image": ("a", PNG)})
        info = (await client.get("/v1/model")).json()
    async with serve(model_path) as client:
        plain = await client.post("/segment", files={"image": ("a", PNG)})
    assert info["outputs"] == ["labels", "scores"]
    assert scored.status_code == plain.status_code == 200
    assert scored.content == plain.content


def raw(data: bytes, media: str | None) -> dict[str, Any]:
    return {"content": data, "headers": {} if media is None else {"content-type": media}}


CUT_MULTIPART = b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc'
BAD_BODIES = {
    "garbage": (raw(b"\xff\xd8\xff\xe0garbage", "image/jpeg"), 400, "bad_image"),
    "truncated": (raw(PNG[: len(PNG) // 2], "image/png"), 400, "bad_image"),
    "empty": (raw(b"", "image/png"), 400, "bad_image"),
    "multipart-cut": (
        raw(CUT_MULTIPART, "multipart/form-data; boundary=x"),
        400,
        "bad_image",
    ),
    "text": (raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
    "no-type": (raw(PNG, None), 415, "unsupported_media_type"),
    "ppm": (raw(encode(IMAGE, "PPM"), "image/x-portable-pixmap"), 415, "unsupported_media_type"),
    "no-image-field": ({"files": {"file": ("a.png", PNG)}}, 422, "invalid_parameter"),
    "bomb": (raw(png_header_only(12_000, 12_000), "image/png"), 413, "image_too_large"),
    # 230 bytes, 50,000 pixels; conv1's padding makes it 10 million at the model.
    "thin": (raw(png_header_only(50_000, 1), "image/png"), 413, "image_too_large"),
}


@pytest.mark.parametrize(("kwargs", "status", "code"), BAD_BODIES.values(), ids=BAD_BODIES)
async def test_bad_bodies_get_their_status_and_json(
    model_path: Path, kwargs: dict[str, Any], status: int, code: str
) -> None:
    async with serve(model_path) as client:
        assert_error(await client.post("/segment", **kwargs), status, code)
        # The process goes on.
        assert (await client.post("/segment", files={"image": ("a", PNG)})).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("format=gif", "format"),
        ("alpha=1.5", "alpha"),
        ("alpha=abc", "alpha"),
        ("max_side=0", "max_side"),
        ("label_encoding=zip", "label_encoding"),
        ("image_format=bmp", "image_format"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    model_path: Path, query: str, field: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(f"/segment?{query}", files={"image": ("a", PNG)})
    assert field in assert_error(response, 422, "invalid_parameter")["message"]


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
        response = await client.post(
            "/segment", files={"image": ("a", encode(pattern(31, 30), "PNG"))}
        )
        assert "31 = 930 pixels" in assert_error(response, 413, "image_too_large")["message"]
        ok = await client.post("/segment", files={"image": ("a", encode(pattern(30, 30), "PNG"))})
        assert ok.status_code == 200


async def asgi_post(
    app: FastAPI, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, int]:
    """POST /segment straight through ASGI; after the body, the client is gone.

    Returns the status, the body and how many body chunks the app pulled.
    """
    sent: list[dict[str, Any]] = []
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {
                "type": "http.request",
                "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks),
            }
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/segment",
        "raw_path": b"/segment",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], body, pulled


async def test_an_oversized_body_is_never_read_whole(model_path: Path) -> None:
    app = create_app(settings(model_path, max_upload_bytes=5_000))
    async with running(app):
        chunks = [b"\x00" * 1_000] * 100  # 100 kB, streamed without a Content-Length
        status, body, pulled = await asgi_post(app, chunks, [(b"content-type", b"image/png")])
        assert status == 413
        assert json.loads(body)["error"]["code"] == "body_too_large"
        assert pulled <= 6
        # A declared Content-Length over the limit is refused before any chunk is read.
        headers = [(b"content-type", b"image/png"), (b"content-length", b"100000")]
        status, _, pulled = await asgi_post(app, chunks, headers)
        assert (status, pulled) == (413, 0)
        # So is a body of a type the service cannot read.
        status, _, pulled = await asgi_post(app, chunks, [(b"content-type", b"text/plain")])
        assert (status, pulled) == (415, 0)


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


async def test_startup_refuses_a_file_of_another_schema(model_path: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(model_path)
    for entry in model.metadata_props:
        if entry.key == "fcn.schema":
            entry.value = "7"
    onnx.save(model, tmp_path / "future.onnx")
    app = create_app(settings(tmp_path / "future.onnx"))
    with pytest.raises(StartupError, match="not a schema-1 FCN model"):
        async with app.router.lifespan_context(app):
            pass


async def test_startup_refuses_a_cpu_fallback_when_a_gpu_is_required(
    model_path: Path, cuda_works: bool
) -> None:
    if cuda_works:
        pytest.skip("a CUDA device works here")
    app = create_app(settings(model_path, providers="cuda,cpu", require_gpu=True))
    with pytest.raises(StartupError, match="FCN_REQUIRE_GPU"):
        async with app.router.lifespan_context(app):
            pass


async def busy(client: httpx.AsyncClient, big_image: bytes) -> asyncio.Task[httpx.Response]:
    """Start a 2000x2000 request and return once the model is running it."""
    task = asyncio.ensure_future(
        client.post("/segment", content=big_image, headers={"content-type": "image/bmp"})
    )
    await wait_metric(client, "fcn_batches_running", 1)
    return task


async def test_a_full_queue_is_503_with_retry_after(model_path: Path, big_image: bytes) -> None:
    app = create_app(settings(model_path, max_queue=1, max_batch_size=1, retry_after_s=3))
    async with running(app) as client:
        blocker = await busy(client, big_image)
        queued = asyncio.ensure_future(client.post("/segment", files={"image": ("a", PNG)}))
        await wait_metric(client, "fcn_queue_depth", 1)
        refused = await client.post("/segment", files={"image": ("a", PNG)})
        assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "3"
        # Refused before its upload is taken in.
        status, _, pulled = await asgi_post(app, [PNG], [(b"content-type", b"image/png")])
        assert (status, pulled) == (503, 0)
        assert (await blocker).status_code == 200
        assert (await queued).status_code == 200


async def test_a_shutdown_out_of_time_answers_what_is_left_with_503(
    model_path: Path, big_image: bytes
) -> None:
    app = create_app(settings(model_path, max_batch_size=1, drain_timeout_s=0.05))
    async with running(app) as client:
        blocker = await busy(client, big_image)
        queued = asyncio.ensure_future(client.post("/segment", files={"image": ("a", PNG)}))
        await wait_metric(client, "fcn_queue_depth", 1)
    # The lifespan is over: the drain waited 0.05 s, then answered both.
    for response in await asyncio.gather(blocker, queued):
        message = assert_error(response, 503, "not_ready")["message"]
        assert "shut down before the result" in message


async def test_an_unexpected_error_is_a_json_500_and_the_service_stays_ready(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("a bug in the encoder")

    app = create_app(settings(model_path, max_queue=1))
    async with running(app) as client:
        with monkeypatch.context() as patch:
            patch.setattr(imaging, "encode_labels", broken)
            failed = await client.post("/segment", files={"image": ("a", PNG)})
        message = assert_error(failed, 500, "internal_error")["message"]
        assert "bug" not in message  # details go to the log, not to clients
        assert (await client.get("/readyz")).status_code == 200
        # Nothing was held back: the one place in the queue, the image budget.
        assert (await client.post("/segment", files={"image": ("a", PNG)})).status_code == 200
        assert app.state.service.segmenter.budget.holders == 0
        text = await metrics(client)
    assert metric(text, "fcn_requests_total", status="500", format="png") == 1


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


async def test_probes_answer_quickly_while_the_model_is_saturated(
    model_path: Path, big_image: bytes
) -> None:
    async with serve(model_path, max_batch_size=1) as client:
        load = [await busy(client, big_image)]
        load += [
            asyncio.ensure_future(
                client.post("/segment", content=big_image, headers={"content-type": "image/bmp"})
            )
            for _ in range(3)
        ]
        latencies = []
        for path in ["/livez", "/readyz", "/v2/health/live", "/v2/health/ready"] * 5:
            start = time.perf_counter()
            response = await client.get(path)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200
        still_busy = metric(await metrics(client), "fcn_batches_running")
        await asyncio.gather(*load)
    assert still_busy == 1
    # Typically ~2 ms; the bound is loose because this 2-core machine is shared.
    assert max(latencies) < 0.5, latencies


async def test_model_endpoint_and_metrics(model_path: Path) -> None:
    overrides = {"max_batch_size": 3, "max_queue": 9, "workers": 2, "intra_op_threads": 0}
    async with serve(model_path, **overrides) as client:
        await client.post("/segment?format=json", files={"image": ("a", PNG)})
        await client.post("/segment", files={"image": ("a", b"junk")})
        info = (await client.get("/v1/model")).json()
        text = await metrics(client)
    assert info["arch"] == "fcn8s"
    assert info["classes"] == [f"class{i}" for i in range(5)]
    assert info["runtime"]["provider"] == "CPUExecutionProvider"
    # Two server processes share the CPUs rather than each taking all of them.
    assert info["runtime"]["intra_op_threads"] == max(1, available_cpus() // 2)
    assert info["input"]["max_model_pixels"] == 8_000_000
    assert info["batching"]["max_batch_pixels"] == 8_000_000
    assert info["input"]["tensor"] == {
        "name": "image",
        "dtype": "uint8",
        "shape": ["N", "H", "W", 3],
    }
    assert info["batching"]["max_batch_size"] == 3
    assert info["batching"]["max_queue"] == 9
    assert info["state"] == "ready"
    assert metric(text, "fcn_requests_total", status="200", format="json") == 1
    assert metric(text, "fcn_requests_total", status="415", format="png") == 1
    for stage in ("decode", "queue", "inference", "encode"):
        assert metric(text, "fcn_stage_duration_seconds_count", stage=stage) == 1
    assert metric(text, "fcn_batch_size_count") == 1
    assert metric(text, "fcn_queue_depth") == 0
    assert metric(text, "fcn_provider_info", provider="CPUExecutionProvider") == 1


async def test_the_provider_fallback_is_published(model_path: Path, cuda_works: bool) -> None:
    async with serve(model_path, providers="cuda,cpu") as client:
        info = (await client.get("/v1/model")).json()
        text = await metrics(client)
    provider = "CUDAExecutionProvider" if cuda_works else "CPUExecutionProvider"
    assert info["runtime"]["provider"] == provider
    assert info["runtime"]["requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert metric(text, "fcn_provider_info", provider=provider) == 1
    # FCN_MAX_BATCH_SIZE=0 (the default): batches on a GPU, single images on CPU.
    assert info["batching"]["max_batch_size"] == (8 if cuda_works else 1)
