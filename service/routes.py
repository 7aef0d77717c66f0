"""HTTP routes: thin adapters from requests to the pipeline; errors go to the one handler.

What each route answers is declared beside it (errors.responses for the errors), so that the
OpenAPI document, and /docs, are true.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from service import errors
from service import request as http
from service.dependencies import ServiceDep
from service.protocol import routes as protocol
from service.request import SegmentQuery, segment_options

router = APIRouter()
# The Open Inference Protocol's model routes (its health probes are the two below).
router.include_router(protocol.router)

IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif"]
# FastAPI cannot see a body this route streams itself; describe it for /docs.
SEGMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image: a form field named image (multipart/form-data), or the "
        "whole body with its image type. JPEG, PNG, WebP, BMP, TIFF or GIF (the first frame).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                },
                "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        },
    }
}
BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


class Health(BaseModel):
    """A probe's answer."""

    status: str = Field(
        description="loading, warming_up, ready, draining or failed; stuck (liveness only)."
    )
    reason: str = Field(description="Why the probe answers as it does, in words.")


def _probe(meaning: str) -> dict[int | str, dict[str, Any]]:
    """The two answers of a health probe: 200, or 503 and when to ask again."""
    return {
        200: {"model": Health, "description": "Yes."},
        503: {"model": Health, "description": meaning, "headers": errors.RETRY_AFTER},
    }


@router.post(
    "/segment",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": BINARY, "image/jpeg": BINARY, "application/json": {}},
            "description": "The label map (png), the overlay (png or jpeg), the JSON answer or "
            "the confidence map (grey png), at the image's own width and height. Headers "
            "X-Model-Version and X-Decode-Time-Ms, X-Queue-Time-Ms, X-Inference-Time-Ms, "
            "X-Encode-Time-Ms, X-Batch-Size, X-Tiles say what the request took.",
        },
        **errors.responses(400, 406, 408, 413, 415, 422, 500, 503, 504),
    },
    openapi_extra=SEGMENT_BODY,
)
async def segment(
    request: Request, query: Annotated[SegmentQuery, Query()], service: ServiceDep
) -> Response:
    """Segment one image: the class of every pixel, at the image's own width and height.

    Try it here: choose a file for image, then Execute. Large images are cut into tiles as
    the model needs (see tile); the answer is the same as one pass would give.
    """
    settings = service.settings
    service.health.check_serving(settings.retry_after_s)
    options = segment_options(query, request.headers.get("accept"), settings)
    service.segmenter.check_options(options)
    request.state.format = options.format
    # The place is taken before the upload is read (waiting for one while uploads hold them),
    # and held from the body's arrival until the answer is made.
    async with service.batcher.admit_waiting(settings.line_wait_s) as ticket:
        image = await http.read_image(request, service.upload)
        service.batcher.received(ticket)
        result = await service.segmenter.segment(
            image, options, ticket, disconnected=request.is_disconnected
        )
    return Response(result.content, media_type=result.media_type, headers=result.headers)


def _health(ok: bool, state: str, reason: str, retry_after_s: int) -> JSONResponse:
    headers = {} if ok else {"Retry-After": str(retry_after_s)}
    status = 200 if ok else 503
    return JSONResponse({"status": state, "reason": reason}, status_code=status, headers=headers)


@router.get("/livez", responses=_probe("A failed warm-up or a stuck inference: restart."))
@router.get("/v2/health/live", responses=_probe("A failed warm-up or a stuck inference: restart."))
async def livez(service: ServiceDep) -> JSONResponse:
    """Liveness: 200 while the process can serve (even before the model is warm); 503 after
    a failed warm-up or while an inference is stuck, when the process should be restarted."""
    alive, state, reason = service.liveness()
    return _health(alive, state, reason, service.settings.retry_after_s)


@router.get("/readyz", responses=_probe("Loading, warming up or draining: send no requests."))
@router.get(
    "/v2/health/ready", responses=_probe("Loading, warming up or draining: send no requests.")
)
async def readyz(service: ServiceDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warm and the service is not draining."""
    health = service.health
    return _health(health.ready, health.state, health.reason, service.settings.retry_after_s)


@router.get("/v1/model")
async def model(service: ServiceDep) -> dict[str, Any]:
    """The model: its file's metadata (classes, palette, metrics, note), where it runs, what
    it accepts, how images are tiled and batched."""
    runtime, settings = service.runtime, service.settings
    return {
        **runtime.info.to_dict(),
        "state": service.health.state,
        "runtime": {
            "name": runtime.runtime,
            "device": runtime.device,
            "precision": runtime.precision,
            "provider": runtime.provider,
            "providers": list(runtime.providers),
            "requested": list(runtime.requested),
            "intra_op_threads": runtime.threads,
            "labels": runtime.label_type,
        },
        "input": {
            "content_types": list(http.ACCEPTED_TYPES),
            "multipart_field": http.FIELD,
            "image_formats": IMAGE_TYPES,
            "max_upload_bytes": settings.max_upload_bytes,
            "upload_timeout_s": settings.upload_timeout_s,
            "upload_min_rate": settings.upload_min_rate,
            "upload_grace_s": settings.upload_grace_s,
            "max_pixels": settings.max_pixels,
            "max_model_pixels": settings.max_model_pixels,
            "max_side": settings.max_side,
            "tensor": {"name": "image", "dtype": "uint8", "shape": ["N", "H", "W", 3]},
        },
        # The file's fcn.tiling, and how this service cuts images with it.
        "tiling": {
            **runtime.info.meta.tiling.to_dict(),
            "exact_overlap": runtime.info.meta.tiling.exact_overlap,
            "mode": settings.tiling,
            "tile_size": service.segmenter.check_tiling(settings.tile_size, settings.tile_overlap),
            "overlap": settings.tile_overlap,
            "max_tiled_pixels": settings.tiled_pixels,
        },
        "batching": {
            "max_batch_size": service.batcher.max_batch_size,
            "max_batch_pixels": service.batcher.max_batch_pixels,
            "max_delay_ms": settings.max_delay_ms,
            "max_queue": settings.max_queue,
            "request_timeout_s": settings.request_timeout_s,
        },
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "The Prometheus text exposition format."}},
)
async def metrics(service: ServiceDep) -> Response:
    """Metrics for Prometheus: requests, stages, batches, queue, tiles, runtime."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
