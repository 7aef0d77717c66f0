"""The protocol's codec as plain functions: bytes in, images out, labels back to bytes, with
no HTTP and no app (the routes' tests send the same bodies over HTTP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.decode import ImageTooLargeError
from service.protocol.codec import (
    HEADER_LENGTH,
    TensorError,
    check_content_encoding,
    check_one_pass,
    encode_infer,
    model_metadata,
    parse_infer,
)
from tests.images import pattern
from tests.isolation import run_without

IMAGES = np.stack([pattern(3, 4, seed=1), pattern(3, 4, seed=2)])  # [2, 3, 4, 3]
MODEL = {"model_name": "m", "model_version": "v"}


def binary_body(images: np.ndarray, **parameters: object) -> tuple[bytes, str]:
    """A request with the binary tensor data extension, and its header's length."""
    tensor = {
        "name": "image",
        "datatype": "UINT8",
        "shape": list(images.shape),
        "parameters": {"binary_data_size": images.size},
    }
    head = json.dumps({"id": "r1", "inputs": [tensor], "parameters": parameters}).encode()
    return head + images.tobytes(), str(len(head))


def test_binary_images_in_and_binary_labels_out() -> None:
    body, length = binary_body(IMAGES, binary_data_output=True)
    asked = parse_infer(body, length, max_pixels=100, outputs=("labels",))
    assert asked.id == "r1"
    assert asked.outputs == (("labels", True),)
    np.testing.assert_array_equal(asked.images, IMAGES)
    labels = IMAGES[..., 0] // 64
    content, head = encode_infer(MODEL, asked, {"labels": labels})
    assert head is not None
    answer = json.loads(content[:head])
    assert answer == {
        **MODEL,
        "id": "r1",
        "outputs": [
            {
                "name": "labels",
                "datatype": "UINT8",
                "shape": [2, 3, 4],
                "parameters": {"binary_data_size": 24},
            }
        ],
    }
    assert content[head:] == labels.tobytes()


def test_json_images_in_and_json_labels_out() -> None:
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 3, 4, 3],
                     "data": IMAGES.tolist()}]}
    ).encode()  # fmt: skip
    asked = parse_infer(body, None, max_pixels=100, outputs=("labels",))
    assert asked.id is None
    assert asked.outputs == (("labels", False),)
    np.testing.assert_array_equal(asked.images, IMAGES)
    labels = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    content, head = encode_infer(MODEL, asked, {"labels": labels})
    assert head is None
    (output,) = json.loads(content)["outputs"]
    assert (output["datatype"], output["shape"]) == ("INT32", [2, 3, 4])
    assert output["data"] == list(range(24))


def test_a_shape_written_with_decimal_points_is_the_same_shape() -> None:
    """JSON has one number type, and the OpenAPI document's integer admits 3.0."""
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2.0, 3.0, 4, 3.0],
                     "data": IMAGES.tolist()}]}
    ).encode()  # fmt: skip
    asked = parse_infer(body, None, max_pixels=100, outputs=("labels",))
    np.testing.assert_array_equal(asked.images, IMAGES)
    half = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1.5, 2, 3]}]})
    with pytest.raises(TensorError, match="has shape"):
        parse_infer(half.encode(), None, max_pixels=100, outputs=("labels",))


def test_the_pixel_limits_are_the_images_own() -> None:
    body, length = binary_body(IMAGES)
    with pytest.raises(
        ImageTooLargeError,
        match="is 4x3 = 12 pixels; the limit is 11 pixels, set by FCN_MAX_PIXELS$",
    ):
        parse_infer(body, length, max_pixels=11, outputs=("labels",))
    check_one_pass(3, 4, max_model_pixels=203 * 204)
    with pytest.raises(ImageTooLargeError, match="/v2 does not tile"):
        check_one_pass(3, 4, max_model_pixels=203 * 204 - 1)


def test_the_model_metadata_names_its_label_type() -> None:
    metadata = model_metadata("m", "v", "tensor(int32)")
    assert metadata["versions"] == ["v"]
    assert metadata["outputs"] == [{"name": "labels", "datatype": "INT32", "shape": [-1, -1, -1]}]


def test_confidence_is_offered_beside_the_labels_and_sent_only_when_asked() -> None:
    metadata = model_metadata("m", "v", "tensor(int32)", ("labels", "confidence"))
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("labels", "INT32"),
        ("confidence", "UINT8"),
    ]
    outputs, default = ("labels", "confidence"), ("labels",)
    body, length = binary_body(IMAGES)
    plain = parse_infer(body, length, max_pixels=100, outputs=outputs, default=default)
    assert plain.outputs == (("labels", False),)
    head = json.loads(body[: int(length)])
    head["outputs"] = [{"name": "confidence", "parameters": {"binary_data": True}}]
    text = json.dumps(head).encode()
    asked = parse_infer(
        text + IMAGES.tobytes(), str(len(text)), max_pixels=100, outputs=outputs, default=default
    )
    assert asked.outputs == (("confidence", True),)
    confidence = np.full((2, 3, 4), 200, np.uint8)
    content, size = encode_infer(MODEL, asked, {"labels": IMAGES[..., 0], "confidence": confidence})
    assert size is not None
    (output,) = json.loads(content[:size])["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "confidence",
        "UINT8",
        [2, 3, 4],
    )
    assert content[size:] == confidence.tobytes()


@pytest.mark.parametrize("encoding", [None, "identity", "IDENTITY"])
def test_an_uncompressed_body_is_taken(encoding: str | None) -> None:
    check_content_encoding(encoding)


@pytest.mark.parametrize("encoding", ["gzip", "br", ""])
def test_a_compressed_body_is_refused(encoding: str) -> None:
    with pytest.raises(TensorError, match=f"Content-Encoding {encoding!r}: send the request"):
        check_content_encoding(encoding)


def test_a_header_length_beyond_the_body_is_refused() -> None:
    body, _ = binary_body(IMAGES)
    with pytest.raises(TensorError, match=f"{HEADER_LENGTH}: '9999' is not a length"):
        parse_infer(body, "9999", max_pixels=100, outputs=("labels",))


def test_the_codec_imports_without_the_web_framework_or_runtime() -> None:
    result = run_without(
        {"fastapi", "starlette", "onnxruntime", "torch"}, "import service.protocol.codec\n"
    )
    assert result.returncode == 0, result.stderr
