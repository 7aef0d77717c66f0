"""HTTP routes: thin adapters from requests to the pipeline; errors go to the one handler."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

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
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in {
        400: "undecodable image",
        406: "no acceptable response format",
        408: "the body came too slowly (the connection is closed)",
        413: "body or image too large",
        415: "unsupported content or image type",
        422: "bad parameter",
        503: "not ready or overloaded (Retry-After)",
        504: "timed out",
    }.items()
}


@router.post(
    "/segment",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}},
            "description": "label map PNG, overlay, JSON, or confidence map PNG",
        },
        **ERROR_RESPONSES,
        422: {
            "description": "bad parameter, or ?format=confidence or ?min_confidence= of a "
            "model exported without its confidence output (export it again)"
        },
    },
    openapi_extra=SEGMENT_BODY,
)
async def segment(
    request: Request, query: Annotated[SegmentQuery, Query()], service: ServiceDep
) -> Response:
    """Segment one image: the labels at the image's own width and height."""
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


@router.get("/livez")
@router.get("/v2/health/live")
async def livez(service: ServiceDep) -> JSONResponse:
    """200 while the process can serve (even before the model is warm); 503 after a failed
    warm-up or while an inference is stuck: restart the process."""
    alive, state, reason = service.liveness()
    return _health(alive, state, reason, service.settings.retry_after_s)


@router.get("/readyz")
@router.get("/v2/health/ready")
async def readyz(service: ServiceDep) -> JSONResponse:
    """200 once the model is loaded and warm and the service is not draining."""
    health = service.health
    return _health(health.ready, health.state, health.reason, service.settings.retry_after_s)


@router.get("/v1/model")
async def model(service: ServiceDep) -> dict[str, Any]:
    """The model's metadata, where it runs, its input contract and the batching settings."""
    runtime, settings = service.runtime, service.settings
    return {
        **runtime.info.to_dict(),
        "state": service.health.state,
        "runtime": {
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


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
