"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) on the one model: server and
model metadata, model readiness, and inference on ``image`` through the batcher /segment uses.

Its errors take the protocol's form, ``{"error": "..."}``, with the statuses of the service's
one table (``service.errors``). Tensors come as JSON or with the binary tensor data extension.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from numpy.typing import NDArray
from starlette.exceptions import HTTPException

from contract.decode import ImageError, ImageTooLargeError
from contract.schema import INPUT, LABELS
from contract.tiling import PAD, padded_pixels
from service.batching import Prediction, Ticket
from service.errors import (
    MalformedBodyError,
    RequestTimeoutError,
    ServiceError,
    classify,
    message,
)
from service.request import read_limited
from service.state import Service

SERVER = "fcn"
DISTRIBUTION = "fcn-segmentation"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
# ONNX Runtime's element types and the protocol's names for them.
DATATYPES = {"tensor(uint8)": "UINT8", "tensor(int32)": "INT32"}
# Asking for these of an input or output needs an extension this server lacks.
UNSUPPORTED = {
    "shared_memory_region": "shared memory",
    "classification": "the classification extension",
}


class TensorError(MalformedBodyError):
    """An inference request whose JSON, tensors or binary data break the protocol (400)."""


class ProtocolRoute(APIRoute):
    """A route whose errors answer ``{"error": message}``; an unexpected exception still goes
    to the app's handler, which logs it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except (ServiceError, ImageError, HTTPException, RequestValidationError) as exc:
                status, _ = classify(exc)
                headers = dict(getattr(exc, "headers", None) or {})
                return JSONResponse({"error": message(exc)}, status_code=status, headers=headers)

        return answer


router = APIRouter(prefix="/v2", route_class=ProtocolRoute)


def get_service(request: Request) -> Service:
    """The app's Service."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def server_version() -> str:
    """The installed distribution's version (``unknown`` from a bare checkout)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_model(service: Service, name: str, version: str | None = None) -> None:
    """404 unless ``name`` (and ``version``, when given) is the model this service runs."""
    served = service.settings.name
    if name != served:
        raise HTTPException(404, f"no model named {name!r}; this server runs {served!r}")
    if version is not None and version != service.runtime.info.version:
        known = service.runtime.info.version
        raise HTTPException(404, f"model {name!r} has no version {version!r}; it serves {known!r}")


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and the protocol extensions it speaks."""
    return {"name": SERVER, "version": server_version(), "extensions": EXTENSIONS}


def _model_metadata(service: Service) -> dict[str, Any]:
    runtime = service.runtime
    return {
        "name": service.settings.name,
        "versions": [runtime.info.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
        # The batcher hands back labels only; a file's `scores` stay inside the service.
        "outputs": [
            {"name": LABELS, "datatype": DATATYPES[runtime.label_type], "shape": [-1, -1, -1]}
        ],
    }


@router.get("/models/{name}")
async def model_metadata(name: str, service: ServiceDep) -> dict[str, Any]:
    """The model's versions, platform and tensors."""
    _check_model(service, name)
    return _model_metadata(service)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: str, service: ServiceDep) -> dict[str, Any]:
    """The model's metadata, when ``version`` is the one served."""
    _check_model(service, name, version)
    return _model_metadata(service)


def _readiness(service: Service, name: str) -> JSONResponse:
    ready = service.health.ready
    headers = {} if ready else {"Retry-After": str(service.settings.retry_after_s)}
    return JSONResponse(
        {"name": name, "ready": ready}, status_code=200 if ready else 503, headers=headers
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, service: ServiceDep) -> JSONResponse:
    """200 once the model is warm and the service not draining, else 503 (as /readyz)."""
    _check_model(service, name)
    return _readiness(service, name)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, service: ServiceDep) -> JSONResponse:
    """Readiness of the version served."""
    _check_model(service, name, version)
    return _readiness(service, name)


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
        raise ImageTooLargeError(
            f"is {width}x{height} = {height * width} pixels; the limit is {max_pixels}"
        )
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
    body: bytes, header_length: str | None, *, max_pixels: int, outputs: tuple[str, ...]
) -> InferRequest:
    """Read an inference request: its JSON header, then any binary tensor data after it."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise TensorError(
                f"{HEADER_LENGTH}: {header_length!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = _object(json.loads(head), "the request")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TensorError(f"the request is not valid JSON ({exc})") from None
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
    return InferRequest(request_id, images, _outputs(request, parameters, outputs))


def _outputs(
    request: Mapping[str, Any], parameters: Mapping[str, Any], known: tuple[str, ...]
) -> tuple[tuple[str, bool], ...]:
    """(name, binary) of every output asked for; all of them when none is named."""
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise TensorError(f"parameters.binary_data_output is {binary!r}, not true or false")
    asked = request.get("outputs")
    if asked is None:
        return tuple((name, binary) for name in known)
    if not isinstance(asked, list):
        raise TensorError("outputs must be a list of {name, parameters}")
    chosen: list[tuple[str, bool]] = []
    for entry in asked:
        name = _object(entry, "an output").get("name")
        if name not in known:
            raise TensorError(f"no output named {name!r}; the model gives {list(known)}")
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise TensorError(f"Content-Encoding {encoding!r}: send the request uncompressed")
    return await read_limited(request, limit)


def _check_one_pass(height: int, width: int, max_model_pixels: int) -> None:
    """Refuse (413) images too large for one pass at the model: this protocol never tiles."""
    padded = padded_pixels(height, width)
    if padded > max_model_pixels:
        raise ImageTooLargeError(
            f"is {width}x{height}: padded by {PAD} on every side it is {padded} pixels at the "
            f"model; the limit of one pass is {max_model_pixels} (FCN_MAX_MODEL_PIXELS) and "
            "/v2 does not tile. Send smaller images, or POST /segment, which tiles"
        )


async def _predict(
    service: Service, ticket: Ticket, images: NDArray[np.uint8], request: Request
) -> NDArray[Any]:
    """Labels [N, H, W] of ``images`` [N, H, W, 3], a batch's worth at a time, as tiles go."""
    batcher, timeout_s = service.batcher, service.settings.request_timeout_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    group = batcher.batch_limit(images.shape[1:3])
    labels: list[NDArray[Any]] = []
    for start in range(0, len(images), group):
        runs = [
            asyncio.ensure_future(
                batcher.predict(
                    ticket,
                    image,
                    timeout_s=max(0.0, deadline - loop.time()),
                    disconnected=request.is_disconnected,
                )
            )
            for image in images[start : start + group]
        ]
        try:
            predictions: list[Prediction] = await asyncio.gather(*runs)
        except RequestTimeoutError:
            for run in runs:
                run.cancel()
            raise RequestTimeoutError(
                f"no result within {timeout_s:g} s (FCN_REQUEST_TIMEOUT_S); retry later"
            ) from None
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        labels += [p.labels for p in predictions]
    return np.stack(labels)


# FastAPI cannot see a body these routes read themselves; describe it for /docs.
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The inference request as JSON; with the binary tensor data extension, "
        f"the JSON ({HEADER_LENGTH} bytes) followed by the tensors' bytes.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/models/{name}/infer", openapi_extra=INFER_BODY)
async def infer(name: str, request: Request, service: ServiceDep) -> Response:
    """Segment the images of tensor ``image`` (UINT8 [N, H, W, 3]): tensor ``labels``."""
    return await _infer(service, request, name)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
async def infer_version(name: str, version: str, request: Request, service: ServiceDep) -> Response:
    """Inference on the version served."""
    return await _infer(service, request, name, version)


async def _infer(
    service: Service, request: Request, name: str, version: str | None = None
) -> Response:
    _check_model(service, name, version)
    settings = service.settings
    service.health.check_serving(settings.retry_after_s)
    # The place is taken before the body is read, and held until the answer is made.
    with service.batcher.admit() as ticket:
        body = await read_body(request, settings.max_upload_bytes)
        asked = await anyio.to_thread.run_sync(
            lambda: parse_infer(
                body,
                request.headers.get(HEADER_LENGTH),
                max_pixels=settings.max_pixels,
                outputs=(LABELS,),
            )
        )
        _, height, width, _ = asked.images.shape
        _check_one_pass(height, width, settings.max_model_pixels)
        labels = await _predict(service, ticket, asked.images, request)
    model = {"model_name": settings.name, "model_version": service.runtime.info.version}
    content, head = await anyio.to_thread.run_sync(encode_infer, model, asked, {LABELS: labels})
    if head is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)}
    )
