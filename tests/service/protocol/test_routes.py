"""The Open Inference Protocol (/v2): Triton's own client against a real uvicorn on a loopback
port, and raw JSON bodies in process for what the client never sends."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import uvicorn
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.main import create_app
from tests.images import encode, pattern
from tests.service.protocol.bodies import SMALL, binary_request, protocol_error, request_body
from tests.service.support import (
    IMAGE,
    PNG,
    free_port,
    metric,
    metrics,
    png_labels,
    serve,
    settings,
    wait_for_server,
)

MODEL = "fcn8s-tiny"  # the file's stem (conftest.py): the name /v1/model reports too
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def url(model_path: Path) -> Iterator[str]:
    """host:port of uvicorn serving the tiny model in a thread, ready; batches of up to 2."""
    port = free_port()
    app = create_app(settings(model_path, max_batch_size=2, access_log=False))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    wait_for_server(f"http://127.0.0.1:{port}", lambda: None if thread.is_alive() else "stopped")
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    """Triton's HTTP client on the server."""
    client = triton.InferenceServerClient(url=url, network_timeout=30)
    yield client
    client.close()


def segment(url: str, image: np.ndarray) -> np.ndarray:
    """The labels of POST /segment?format=png for ``image`` (lossless PNG)."""
    response = httpx.post(
        f"http://{url}/segment?format=png",
        files={"image": ("a.png", encode(image, "PNG"), "image/png")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return png_labels(response.content)


def image_input(images: np.ndarray, *, binary: bool, datatype: str = "UINT8") -> Any:
    tensor = triton.InferInput("image", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def test_metadata_and_readiness_through_the_client(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "fcn"
    assert "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata(MODEL)
    (version,) = model["versions"]
    assert version.startswith("fcn8s-")  # arch and the file's digest, as /v1/model says
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert model["outputs"] == [
        {"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]},
        {"name": "confidence", "datatype": "UINT8", "shape": [-1, -1, -1]},
    ]
    assert client.get_model_metadata(MODEL, model_version=version) == model
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version=version)
    assert not client.is_model_ready("other")
    assert not client.is_model_ready(MODEL, model_version="7")
    tensor = image_input(IMAGE[None], binary=True)
    assert client.infer(MODEL, [tensor], model_version=version).as_numpy("labels").size
    with pytest.raises(InferenceServerException, match="no version '7'") as caught:
        client.infer(MODEL, [tensor], model_version="7")
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no model named 'other'") as caught:
        client.get_model_metadata("other")
    assert caught.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_the_labels_of_segment(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    expected = segment(url, IMAGE)
    assert len(np.unique(expected)) > 1  # an image of several classes
    result = client.infer(
        MODEL,
        [image_input(IMAGE[None], binary=binary)],
        outputs=[triton.InferRequestedOutput("labels", binary_data=binary)],
        request_id="req-7",
    )
    labels = result.as_numpy("labels")
    assert labels.dtype == np.uint8
    assert labels.shape == (1, *IMAGE.shape[:2])
    np.testing.assert_array_equal(labels[0], expected)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == MODEL
    assert response["model_version"] == client.get_model_metadata(MODEL)["versions"][0]
    # No outputs named: the client asks for all of them, binary.
    default = client.infer(MODEL, [image_input(IMAGE[None], binary=binary)])
    np.testing.assert_array_equal(default.as_numpy("labels"), labels)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_confidence_comes_when_asked_and_equals_segments(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    answer = httpx.post(
        f"http://{url}/segment?format=confidence",
        files={"image": ("a.png", PNG, "image/png")},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    expected = np.asarray(Image.open(io.BytesIO(answer.content)))
    asked = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("labels", "confidence")]
    result = client.infer(MODEL, [image_input(IMAGE[None], binary=binary)], outputs=asked)
    confidence = result.as_numpy("confidence")
    assert confidence.dtype == np.uint8
    assert confidence.shape == (1, *IMAGE.shape[:2])
    np.testing.assert_array_equal(confidence[0], expected)
    np.testing.assert_array_equal(result.as_numpy("labels")[0], segment(url, IMAGE))


@pytest.mark.anyio
async def test_a_model_without_confidence_offers_labels_alone(
    model_without_confidence_path: Path,
) -> None:
    name = model_without_confidence_path.stem
    body = request_body(SMALL, outputs=[{"name": "confidence"}])
    async with serve(model_without_confidence_path) as client:
        metadata = (await client.get(f"/v2/models/{name}")).json()
        refused = await client.post(f"/v2/models/{name}/infer", json=body)
        plain = await client.post(f"/v2/models/{name}/infer", json=request_body(SMALL))
    assert [o["name"] for o in metadata["outputs"]] == ["labels"]
    assert "no output named 'confidence'; the model gives ['labels']" in protocol_error(
        refused, 400
    )
    assert plain.status_code == 200
    assert [o["name"] for o in plain.json()["outputs"]] == ["labels"]


def test_a_batch_of_two_gets_each_images_own_labels(
    client: triton.InferenceServerClient, url: str
) -> None:
    images = np.stack([pattern(33, 47, seed=1), pattern(33, 47, seed=2)])
    labels = client.infer(MODEL, [image_input(images, binary=True)]).as_numpy("labels")
    assert labels.shape == (2, 33, 47)
    for image, got in zip(images, labels, strict=True):
        np.testing.assert_array_equal(got, segment(url, image))
    assert not np.array_equal(labels[0], labels[1])


@pytest.mark.parametrize(
    ("model", "tensor", "status", "message"),
    [
        ("other", image_input(IMAGE[None], binary=True), "404", "no model named 'other'"),
        (
            MODEL,
            image_input(IMAGE[None].astype(np.float32), binary=True, datatype="FP32"),
            "400",
            "datatype 'FP32'; the model takes UINT8",
        ),
        (
            MODEL,
            image_input(np.zeros((1, 8, 8, 4), np.uint8), binary=False),
            "400",
            "shape [1, 8, 8, 4]; the model takes [N, H, W, 3]",
        ),
        (MODEL, image_input(IMAGE, binary=True), "400", "shape [45, 61, 3]"),
    ],
    ids=["unknown-model", "float-image", "four-channels", "no-batch-axis"],
)
def test_bad_requests_raise_the_clients_error_with_the_status(
    client: triton.InferenceServerClient, model: str, tensor: Any, status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor])
    assert caught.value.status() == status
    assert message in caught.value.message()


def test_the_server_stays_ready_after_bad_requests(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, [image_input(np.zeros((1, 4, 4, 4), np.uint8), binary=True)])
    assert client.is_model_ready(MODEL)
    assert client.infer(MODEL, [image_input(IMAGE[None], binary=True)]).as_numpy("labels").size


# In process: the raw bodies the client never sends.


@pytest.mark.anyio
@pytest.mark.runtimes
async def test_nested_and_flat_json_data_give_the_same_json_labels(model_path: Path) -> None:
    images = IMAGE[None]
    async with serve(model_path) as client:
        nested = await client.post(INFER, json=request_body(images, id="n"))
        flat = await client.post(INFER, json=request_body(images, images.ravel().tolist()))
        expected = png_labels((await client.post("/segment", files={"image": ("a", PNG)})).content)
        text = await metrics(client)
    assert nested.status_code == 200, nested.text
    # Protocol requests are counted beside /segment's, under their own format.
    assert metric(text, "fcn_requests_total", status="200", format="v2") == 2
    assert metric(text, "fcn_requests_total", status="200", format="png") == 1
    assert nested.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in nested.headers
    body = nested.json()
    assert body["id"] == "n"
    assert "id" not in flat.json()
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("labels", "UINT8", [1, 45, 61])
    np.testing.assert_array_equal(np.array(output["data"]).reshape(45, 61), expected)
    assert flat.json()["outputs"] == body["outputs"]


@pytest.mark.anyio
async def test_binary_outputs_when_the_request_parameters_ask(model_path: Path) -> None:
    images = IMAGE[None]
    head = binary_request(images, binary_data_output=True)
    async with serve(model_path) as client:
        response = await client.post(
            INFER,
            content=head + images.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        json_out = await client.post(INFER, json=request_body(images))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    (output,) = json.loads(response.content[:length])["outputs"]
    assert output["parameters"] == {"binary_data_size": 45 * 61}
    labels = np.frombuffer(response.content[length:], np.uint8).reshape(output["shape"])
    np.testing.assert_array_equal(labels.ravel(), json_out.json()["outputs"][0]["data"])
