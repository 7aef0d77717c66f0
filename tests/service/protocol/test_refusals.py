"""The Open Inference Protocol's refusals: malformed bodies (400, naming the fault), limits
(413), a draining model, overload (503) and timeouts (504), each in the protocol's own
{"error": "message"} and with the server still ready afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.main import create_app
from tests.images import pattern
from tests.service.protocol.bodies import SMALL, binary_request, protocol_error, request_body
from tests.service.support import busy, running, serve, settings

MODEL = "fcn8s-tiny"  # the file's stem (conftest.py): the name /v1/model reports too
INFER = f"/v2/models/{MODEL}/infer"


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{", {}, "not valid JSON"),
        (b"[]", {}, "the request must be a JSON object"),
        (json.dumps({"inputs": []}).encode(), {}, "the model takes one input, 'image'"),
        (
            json.dumps(request_body(SMALL, SMALL.ravel().tolist()[:-1])).encode(),
            {},
            "data has 59 values; shape [1, 4, 5, 3] needs 60",
        ),
        (
            json.dumps(request_body(SMALL, [256] * 60)).encode(),
            {},
            "data must be integers 0-255",
        ),
        (
            json.dumps(request_body(SMALL, [[1, 2], [3]])).encode(),
            {},
            "data is not a regular array",
        ),
        (
            json.dumps(request_body(SMALL, outputs=[{"name": "scores"}])).encode(),
            {},
            "no output named 'scores'; the model gives ['labels', 'confidence']",
        ),
        (
            json.dumps(request_body(SMALL, id=3)).encode(),
            {},
            "the protocol's id is a string",
        ),
        (
            binary_request(SMALL) + SMALL.tobytes()[:-1],
            {"Inference-Header-Content-Length": str(len(binary_request(SMALL)))},
            "59 bytes of binary data follow",
        ),
        (
            binary_request(SMALL, size=7) + SMALL.tobytes(),
            {"Inference-Header-Content-Length": str(len(binary_request(SMALL, size=7)))},
            "binary_data_size is 7; shape [1, 4, 5, 3] of UINT8 is 60 bytes",
        ),
        (
            binary_request(SMALL) + SMALL.tobytes(),
            {"Inference-Header-Content-Length": "99999"},
            "'99999' is not a length within the",
        ),
        (
            json.dumps(request_body(SMALL)).encode(),
            {"Content-Encoding": "gzip"},
            "Content-Encoding 'gzip': send the request uncompressed",
        ),
    ],
    ids=[
        "truncated-json",
        "not-an-object",
        "no-inputs",
        "too-few-values",
        "out-of-range",
        "ragged",
        "unknown-output",
        "numeric-id",
        "short-binary",
        "wrong-binary-size",
        "header-beyond-body",
        "compressed",
    ],
)
@pytest.mark.anyio
async def test_malformed_requests_are_400_naming_the_fault(
    model_path: Path, body: bytes, headers: dict[str, str], message: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(INFER, content=body, headers=headers)
        assert message in protocol_error(response, 400)
        assert (await client.get(f"/v2/models/{MODEL}/ready")).status_code == 200


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_draining_model_is_not_ready_but_finishes_requests(model_path: Path) -> None:
    app = create_app(settings(model_path, retry_after_s=4))
    async with running(app) as client:
        app.state.service.drain()  # as on SIGTERM
        ready = await client.get(f"/v2/models/{MODEL}/ready")
        answered = await client.post(INFER, json=request_body(SMALL))
    assert ready.status_code == 503
    assert ready.json() == {"name": MODEL, "ready": False}
    assert ready.headers["retry-after"] == "4"
    assert answered.status_code == 200


@pytest.mark.anyio
async def test_a_body_over_the_upload_limit_is_413(model_path: Path) -> None:
    body = json.dumps(request_body(SMALL)).encode()
    async with serve(model_path, max_upload_bytes=100) as client:
        response = await client.post(INFER, content=body)
    assert protocol_error(response, 413) == f"the body is {len(body)} bytes; the limit is 100"


@pytest.mark.anyio
async def test_pixel_limits_are_413(model_path: Path) -> None:
    wide = pattern(2, 700)[None]  # 1400 pixels, but (2 + 200) x (700 + 200) at the model
    async with serve(model_path, max_pixels=1500, max_model_pixels=400 * 400) as client:
        too_many = await client.post(INFER, json=request_body(pattern(50, 31)[None]))
        too_wide = await client.post(INFER, json=request_body(wide))
        fits = await client.post(INFER, json=request_body(pattern(30, 30)[None]))
    assert protocol_error(too_many, 413).endswith(
        "50 = 1550 pixels; the limit is 1500 pixels, set by FCN_MAX_PIXELS"
    )
    assert "/v2 does not tile" in protocol_error(too_wide, 413)
    assert fits.status_code == 200


@pytest.mark.slow
@pytest.mark.anyio
async def test_overload_is_503_with_retry_after_and_timeouts_504(
    model_path: Path, big_image: bytes
) -> None:
    body = json.dumps(request_body(SMALL)).encode()
    async with serve(model_path, max_queue=1, max_batch_size=1, retry_after_s=3) as client:
        blocker = await busy(client, big_image)  # holds the one place
        refused = await client.post(INFER, content=body)
        assert (await blocker).status_code == 200
    assert "the limit" in protocol_error(refused, 503)
    assert refused.headers["retry-after"] == "3"
    big = np.tile(pattern(100, 100), (1, 20, 20, 1))  # 0.1 s or more at the model
    head = binary_request(big)
    async with serve(model_path, request_timeout_s=0.1) as client:
        late = await client.post(
            INFER,
            content=head + big.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
    assert "no result within 0.1 s" in protocol_error(late, 504)
