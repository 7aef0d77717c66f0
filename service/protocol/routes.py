"""The Open Inference Protocol's routes (/v2): server and model metadata, model readiness, and
inference on ``image`` through the batcher /segment uses; the wire format is ``codec``'s.

Its errors take the protocol's form, ``{"error": "..."}``, with the statuses of the service's
one table (``service.errors``). Tensors come as JSON or with the binary tensor data extension.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from contract import distribution
from contract.schema import CONFIDENCE, GEOMETRY, INPUT, LABELS
from service import errors
from service.dependencies import ServiceDep
from service.errors import REPORTED, protocol_error
from service.fanout import predict_batches
from service.protocol import codec
from service.protocol.codec import (
    HEADER_LENGTH,
    check_content_encoding,
    check_one_pass,
    encode_infer,
    parse_infer,
)
from service.request import read_body
from service.state import Service


class ProtocolRoute(APIRoute):
    """A route whose errors answer ``{"error": message}``; an unexpected exception still goes
    to the app's handler, which logs it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except REPORTED as exc:
                return protocol_error(exc)

        return answer


router = APIRouter(prefix="/v2", route_class=ProtocolRoute)
# The path parameters of the model routes.
Name = Annotated[
    str,
    Path(
        description="The model's name: this server runs one, named by FCN_MODEL_NAME or "
        "after its file (GET /v1/model says which); any other name is 404."
    ),
]
Version = Annotated[
    str,
    Path(
        description="The model's version: the one it serves is listed by "
        "GET /v2/models/{name}; any other version is 404."
    ),
]


class Readiness(BaseModel):
    """A model's readiness."""

    name: str = Field(description="The model's name.")
    ready: bool = Field(description="Whether it takes inference requests now.")


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Ready."},
    **errors.responses(404, protocol=True),
    503: {
        "model": Readiness,
        "description": "Loading, warming up or draining.",
        "headers": errors.RETRY_AFTER,
    },
}


def _check_model(service: Service, name: str, version: str | None = None) -> None:
    """404 unless ``name`` (and ``version``, when given) is the model this service runs."""
    served = service.settings.name
    if name != served:
        raise HTTPException(404, f"no model named {name!r}; this server runs {served!r}")
    if version is not None and version != service.runtime.info.version:
        known = service.runtime.info.version
        raise HTTPException(404, f"model {name!r} has no version {version!r}; it serves {known!r}")


def _model_metadata(service: Service) -> dict[str, Any]:
    runtime = service.runtime
    metadata = codec.model_metadata(
        service.settings.name, runtime.info.version, runtime.label_type, runtime.outputs
    )
    where = {"runtime": runtime.runtime, "device": runtime.device, "precision": runtime.precision}
    return {**metadata, "parameters": where}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and the protocol extensions it speaks."""
    return codec.server_metadata(distribution.version())


@router.get("/models/{name}", responses=errors.responses(404, protocol=True))
async def model_metadata(name: Name, service: ServiceDep) -> dict[str, Any]:
    """The model's versions, platform and tensors."""
    _check_model(service, name)
    return _model_metadata(service)


@router.get("/models/{name}/versions/{version}", responses=errors.responses(404, protocol=True))
async def model_version_metadata(
    name: Name, version: Version, service: ServiceDep
) -> dict[str, Any]:
    """The model's versions, platform and tensors, when the version is the one served."""
    _check_model(service, name, version)
    return _model_metadata(service)


def _readiness(service: Service, name: str) -> JSONResponse:
    ready = service.health.ready
    headers = {} if ready else {"Retry-After": str(service.settings.retry_after_s)}
    return JSONResponse(
        {"name": name, "ready": ready}, status_code=200 if ready else 503, headers=headers
    )


@router.get("/models/{name}/ready", responses=READY_RESPONSES)
async def model_ready(name: Name, service: ServiceDep) -> JSONResponse:
    """200 once the model is warm and the service not draining, else 503 (as /readyz)."""
    _check_model(service, name)
    return _readiness(service, name)


@router.get("/models/{name}/versions/{version}/ready", responses=READY_RESPONSES)
async def model_version_ready(name: Name, version: Version, service: ServiceDep) -> JSONResponse:
    """200 once the model is warm and the service not draining, else 503, when the version is
    the one served."""
    _check_model(service, name, version)
    return _readiness(service, name)


# FastAPI cannot see a body these routes read themselves; describe it for /docs (and for
# schema-driven fuzzers): what the codec accepts, as far as JSON Schema can say it. It cannot
# say that data holds N x H x W x 3 values; the description does.
_UNSUPPORTED = {"propertyNames": {"not": {"enum": list(codec.UNSUPPORTED)}}}
_SIDE = {"type": "integer", "minimum": 1}
INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "Echoed in the response."},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                # The pixels come as data, or as binary data of binary_data_size bytes.
                "anyOf": [
                    {"required": ["data"]},
                    {
                        "required": ["parameters"],
                        "properties": {"parameters": {"required": ["binary_data_size"]}},
                    },
                ],
                "properties": {
                    "name": {"type": "string", "enum": [INPUT]},
                    "shape": {
                        "type": "array",
                        "description": "[N, H, W, 3]: N images of H x W RGB pixels.",
                        "prefixItems": [_SIDE, _SIDE, _SIDE, {"type": "integer", "const": 3}],
                        "minItems": 4,
                        "maxItems": 4,
                    },
                    "datatype": {"type": "string", "enum": ["UINT8"]},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                        **_UNSUPPORTED,
                    },
                    "data": {
                        "type": "array",
                        "description": "N x H x W x 3 integers 0-255, row-major, flat or "
                        "nested; absent when binary_data_size is given.",
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "description": "The tensors to answer, each at most once; none named: labels. "
            "confidence only from a model exported with it, geometry only from a two-head "
            "model (400 otherwise).",
            "maxItems": 3,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": [LABELS, CONFIDENCE, GEOMETRY]},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                        **_UNSUPPORTED,
                    },
                },
            },
        },
    },
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The inference request as JSON. With the binary tensor data extension "
        f"the body is that JSON followed by the tensor's bytes, and the {HEADER_LENGTH} "
        "header gives the JSON's length (as Triton's clients send it).",
        "content": {"application/json": {"schema": INFER_REQUEST}},
    }
}
BINARY_ANSWER: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Tensor labels, UINT8 [N, H, W] (INT32 above 255 classes), and "
        "confidence and geometry, UINT8 [N, H, W], when asked: JSON, or with binary_data the JSON "
        f"({HEADER_LENGTH} bytes) followed by the tensors' bytes.",
        "content": {"application/json": {}, "application/octet-stream": BINARY_ANSWER},
    },
    **errors.responses(400, 404, 408, 413, 500, 503, 504, protocol=True),
}


@router.post("/models/{name}/infer", openapi_extra=INFER_BODY, responses=INFER_RESPONSES)
async def infer(name: Name, request: Request, service: ServiceDep) -> Response:
    """Segment the images of tensor image (UINT8 [N, H, W, 3]) into tensor labels and, when
    asked of a model that has it, tensor confidence (UINT8 [N, H, W]); the images of one
    request share their size, and none is tiled (413 past FCN_MAX_MODEL_PIXELS)."""
    return await _infer(service, request, name)


@router.post(
    "/models/{name}/versions/{version}/infer",
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
)
async def infer_version(
    name: Name, version: Version, request: Request, service: ServiceDep
) -> Response:
    """Inference, as POST /v2/models/{name}/infer, when the version is the one served."""
    return await _infer(service, request, name, version)


async def _infer(
    service: Service, request: Request, name: str, version: str | None = None
) -> Response:
    _check_model(service, name, version)
    settings = service.settings
    service.health.check_serving(settings.retry_after_s)
    # The place is taken before the body is read (waiting for one while uploads hold them),
    # and held from the body's arrival until the answer is made.
    async with service.batcher.admit_waiting(settings.line_wait_s) as ticket:
        check_content_encoding(request.headers.get("content-encoding"))
        body = await read_body(request, service.upload)
        service.batcher.received(ticket)
        asked = await anyio.to_thread.run_sync(
            lambda: parse_infer(
                body,
                request.headers.get(HEADER_LENGTH),
                max_pixels=settings.max_pixels,
                outputs=service.runtime.outputs,
                # Clients that name no output get the labels, as before confidence existed.
                default=(LABELS,),
            )
        )
        _, height, width, _ = asked.images.shape
        check_one_pass(height, width, settings.max_model_pixels)
        batches = predict_batches(
            service.batcher,
            ticket,
            list(asked.images),
            deadline=asyncio.get_running_loop().time() + settings.request_timeout_s,
            timeout_s=settings.request_timeout_s,
            disconnected=request.is_disconnected,
        )
        predictions = [p async for batch in batches for p in batch]
    tensors = {LABELS: np.stack([p.labels for p in predictions])}
    if CONFIDENCE in (name for name, _ in asked.outputs):
        # Asked only of a model that has it (``outputs``): the runtime gave it every time.
        maps = [p.confidence for p in predictions if p.confidence is not None]
        tensors[CONFIDENCE] = np.stack(maps)
    if GEOMETRY in (name for name, _ in asked.outputs):
        # Asked only of a two-head model (``outputs``): the runtime gave it every time.
        tensors[GEOMETRY] = np.stack([p.geometry for p in predictions if p.geometry is not None])
    model = {"model_name": settings.name, "model_version": service.runtime.info.version}
    content, head = await anyio.to_thread.run_sync(encode_infer, model, asked, tensors)
    if head is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)}
    )
