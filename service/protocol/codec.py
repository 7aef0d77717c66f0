"""The Open Inference Protocol's wire format on the one model, with no HTTP in it: an inference
request's JSON and binary tensor data read into images, labels written back, the metadata
documents, and the checks a request must pass before its body is read or run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract.decode import ImageTooLargeError, too_many_pixels
from contract.schema import CONFIDENCE, GEOMETRY, INPUT, LABELS, no_geometry
from contract.tiling import PAD, padded_pixels

SERVER = "fcn"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
# A length in a header: ASCII digits, as many as any body can need (str.isdigit() takes "²",
# which int() refuses, and int() refuses more than 4300 digits).
LENGTH = re.compile(r"[0-9]{1,20}")
# ONNX Runtime's element types and the protocol's names for them.
DATATYPES = {"tensor(uint8)": "UINT8", "tensor(int32)": "INT32"}
# Asking for these of an input or output needs an extension this server lacks.
UNSUPPORTED = {
    "shared_memory_region": "shared memory",
    "classification": "the classification extension",
}


class TensorError(ValueError):
    """An inference request whose JSON, tensors or binary data break the protocol (400)."""


def server_metadata(version: str) -> dict[str, Any]:
    """The server's name, ``version`` and the protocol extensions it speaks."""
    return {"name": SERVER, "version": version, "extensions": EXTENSIONS}


def model_metadata(
    name: str, version: str, label_type: str, outputs: tuple[str, ...] = (LABELS,)
) -> dict[str, Any]:
    """The model's versions, platform and tensors; ``label_type`` is ONNX Runtime's type of
    ``labels`` (``tensor(uint8)`` or ``tensor(int32)``), ``outputs`` the per-pixel outputs
    the runtime gives (``labels``, and ``confidence`` and ``geometry`` when the file has them)."""
    types = {LABELS: DATATYPES[label_type], CONFIDENCE: "UINT8", GEOMETRY: "UINT8"}
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
        # The batcher hands back per-pixel maps only; a file's `scores` stay inside.
        "outputs": [{"name": o, "datatype": types[o], "shape": [-1, -1, -1]} for o in outputs],
    }


def check_content_encoding(encoding: str | None) -> None:
    """Refuse (400) a body sent compressed (``encoding`` is the Content-Encoding header, None
    when absent): tensors come as they are."""
    encoding = "identity" if encoding is None else encoding.lower()
    if encoding != "identity":
        raise TensorError(f"Content-Encoding {encoding!r}: send the request uncompressed")


@dataclass(frozen=True)
class InferRequest:
    """What an inference request asks: its images and, per output, whether binary."""

    id: str | None
    images: NDArray[np.uint8]  # N, H, W, 3
    outputs: tuple[tuple[str, bool], ...]  # (name, binary)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TensorError(f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def _unsupported(parameters: Mapping[str, Any], where: str) -> None:
    for key, feature in UNSUPPORTED.items():
        if key in parameters:
            raise TensorError(f"{where}: parameters.{key}: this server does not support {feature}")


def _shape(tensor: Mapping[str, Any], max_pixels: int) -> tuple[int, int, int, int]:
    """The input's declared [N, H, W, 3]: datatype and shape checked, pixels under the limit."""
    datatype = tensor.get("datatype")
    if datatype != "UINT8":
        raise TensorError(f"input {INPUT!r} has datatype {datatype!r}; the model takes UINT8")
    shape = tensor.get("shape")
    if isinstance(shape, list):
        # JSON has one number type: 2.0 is an integer to JSON Schema (the OpenAPI document).
        shape = [int(d) if type(d) is float and d.is_integer() else d for d in shape]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(type(d) is int for d in shape)
        or shape[3] != 3
        or min(shape) < 1
    ):
        raise TensorError(
            f"input {INPUT!r} has shape {shape!r}; the model takes [N, H, W, 3], N, H, W >= 1"
        )
    count, height, width, _ = shape
    if height * width > max_pixels:
        raise too_many_pixels(height * width, max_pixels, size=f"{width}x{height} = ")
    return count, height, width, 3


def _json_data(data: object, shape: tuple[int, ...]) -> NDArray[np.uint8]:
    """``data`` (flat or nested, row-major) as a uint8 array of ``shape``."""
    if not isinstance(data, list):
        raise TensorError(f"input {INPUT!r}: data must be a list of numbers")
    try:
        values = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise TensorError(f"input {INPUT!r}: data is not a regular array ({exc})") from None
    if values.size != math.prod(shape):
        raise TensorError(
            f"input {INPUT!r}: data has {values.size} values; shape {list(shape)} needs "
            f"{math.prod(shape)}"
        )
    if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise TensorError(f"input {INPUT!r}: data must be integers 0-255 (UINT8)")
    return values.astype(np.uint8).reshape(shape)


def parse_infer(
    body: bytes,
    header_length: str | None,
    *,
    max_pixels: int,
    outputs: tuple[str, ...],
    default: tuple[str, ...] | None = None,
) -> InferRequest:
    """Read an inference request: its JSON header, then any binary tensor data after it;
    ``outputs`` are those it may ask for, ``default`` those it gets when it names none (None:
    all of them)."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not LENGTH.fullmatch(header_length) or int(header_length) > len(body):
            raise TensorError(
                f"{HEADER_LENGTH}: {header_length!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        document = json.loads(head)
    except RecursionError:
        # Arrays or objects nested about a thousand deep (Triton's qa/L0_http sends 150000).
        raise TensorError("the request's JSON is nested too deeply to read") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise TensorError(f"the request is not valid JSON ({exc})") from None
    request = _object(document, "the request")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise TensorError(f"inputs is {inputs!r}, not a list of tensors")
    names = [_object(t, "an input").get("name") for t in inputs]
    if names != [INPUT]:
        raise TensorError(f"inputs are {names!r}; the model takes one input, {INPUT!r}")
    (tensor,) = inputs
    tensor_parameters = _object(tensor.get("parameters", {}), f"input {INPUT!r}")
    _unsupported(tensor_parameters, f"input {INPUT!r}")
    shape = _shape(tensor, max_pixels)
    size = tensor_parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != math.prod(shape):
            raise TensorError(
                f"input {INPUT!r}: binary_data_size is {size!r}; shape {list(shape)} of UINT8 "
                f"is {math.prod(shape)} bytes"
            )
        if len(binary) != size:
            raise TensorError(
                f"input {INPUT!r}: {len(binary)} bytes of binary data follow the "
                f"{len(head)}-byte JSON header; binary_data_size says {size}"
            )
        images = np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    else:
        if binary:
            raise TensorError(
                f"{len(binary)} bytes of binary data but no input has binary_data_size"
            )
        images = _json_data(tensor.get("data"), shape)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError(f"id is {request_id!r}; the protocol's id is a string")
    chosen = _outputs(request, parameters, outputs, outputs if default is None else default)
    return InferRequest(request_id, images, chosen)


def _outputs(
    request: Mapping[str, Any],
    parameters: Mapping[str, Any],
    known: tuple[str, ...],
    default: tuple[str, ...],
) -> tuple[tuple[str, bool], ...]:
    """(name, binary) of every output asked for; ``default`` when none is named."""
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise TensorError(f"parameters.binary_data_output is {binary!r}, not true or false")
    asked = request.get("outputs")
    if asked is None:
        return tuple((name, binary) for name in default)
    if not isinstance(asked, list):
        raise TensorError("outputs must be a list of {name, parameters}")
    chosen: list[tuple[str, bool]] = []
    for entry in asked:
        name = _object(entry, "an output").get("name")
        if name not in known:
            hint = f" ({no_geometry('this model')})" if name == GEOMETRY else ""
            raise TensorError(f"no output named {name!r}; the model gives {list(known)}{hint}")
        if name in (n for n, _ in chosen):
            raise TensorError(f"output {name!r} is asked for twice")
        output_parameters = _object(entry.get("parameters", {}), f"output {name!r}")
        _unsupported(output_parameters, f"output {name!r}")
        wanted = output_parameters.get("binary_data", binary)
        if not isinstance(wanted, bool):
            raise TensorError(f"output {name!r}: binary_data is {wanted!r}, not true or false")
        chosen.append((name, wanted))
    return tuple(chosen)


def encode_infer(
    model: Mapping[str, str], request: InferRequest, tensors: Mapping[str, NDArray[Any]]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary data follows it."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in request.outputs:
        array = tensors[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPES[f"tensor({array.dtype.name})"],
            "shape": list(array.shape),
        }
        if binary:
            chunks.append(np.ascontiguousarray(array).tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    body: dict[str, Any] = {**model}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    head = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def check_one_pass(height: int, width: int, max_model_pixels: int) -> None:
    """Refuse (413) images too large for one pass at the model: this protocol never tiles."""
    padded = padded_pixels(height, width)
    if padded > max_model_pixels:
        raise ImageTooLargeError(
            f"is {width}x{height}: padded by {PAD} on every side it is {padded} pixels at the "
            f"model; the limit of one pass is {max_model_pixels} (FCN_MAX_MODEL_PIXELS) and "
            "/v2 does not tile. Send smaller images, or POST /segment, which tiles"
        )
