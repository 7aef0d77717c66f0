"""Every error the service reports (its own, ``contract.decode``'s and the protocol codec's),
the one table mapping them to HTTP, and the one handler.

Clients get ``{"error": {"code": ..., "message": ...}}`` with an honest status; the Open
Inference Protocol's routes (/v2) word the same errors its way, ``{"error": message}``. Both
bodies, and what each status means, are declared to OpenAPI here too (``responses``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from contract.decode import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.protocol.codec import TensorError


class ServiceError(Exception):
    """A failure the service reports on purpose; ``headers`` go into the response."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class StartupError(RuntimeError):
    """The model cannot be served (file, schema, provider); the process must not start."""


class MalformedBodyError(ServiceError):
    """A multipart/form-data body that cannot be parsed (the image's own faults are
    ``contract.decode``'s errors)."""


class BodyTooLargeError(ServiceError):
    """The body is larger than FCN_MAX_UPLOAD_BYTES."""


class UploadTimeoutError(ServiceError):
    """The body did not arrive within FCN_UPLOAD_TIMEOUT_S, or fell below FCN_UPLOAD_MIN_RATE;
    the connection is closed, since the rest of the body will never be read."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message, headers={"Connection": "close"})
        self.reason = reason  # "timeout" or "too_slow": the label of fcn_uploads_cut_off


class UnsupportedMediaTypeError(ServiceError):
    """The content type is not one the service reads."""


class NotAcceptableError(ServiceError):
    """The Accept header names no format the service produces."""


class InvalidParameterError(ServiceError):
    """A query parameter or form field is wrong."""


class OverloadedError(ServiceError):
    """The queue is full."""


class NotReadyError(ServiceError):
    """The model is still loading or warming up, or the service is draining."""


class RequestTimeoutError(ServiceError):
    """The labels were not ready within FCN_REQUEST_TIMEOUT_S."""

    @classmethod
    def after(cls, timeout_s: float) -> RequestTimeoutError:
        """The one answer of a request that ran out of its ``timeout_s``."""
        return cls(f"no result within {timeout_s:g} s (FCN_REQUEST_TIMEOUT_S); retry later")


class InferenceError(ServiceError):
    """ONNX Runtime failed on the batch this request was part of."""


class ClientGoneError(ServiceError):
    """The client disconnected before its image reached the model."""


# The one table: error -> (HTTP status, code). A subclass maps through its nearest listed base.
ERRORS: dict[type[Exception], tuple[int, str]] = {
    CorruptImageError: (400, "bad_image"),
    MalformedBodyError: (400, "bad_image"),
    TensorError: (400, "bad_request"),
    UploadTimeoutError: (408, "upload_timeout"),
    BodyTooLargeError: (413, "body_too_large"),
    ImageTooLargeError: (413, "image_too_large"),
    UnsupportedMediaTypeError: (415, "unsupported_media_type"),
    UnsupportedImageError: (415, "unsupported_media_type"),
    NotAcceptableError: (406, "not_acceptable"),
    InvalidParameterError: (422, "invalid_parameter"),
    RequestValidationError: (422, "invalid_parameter"),
    ClientGoneError: (499, "client_closed_request"),
    ClientDisconnect: (499, "client_closed_request"),
    InferenceError: (500, "inference_failed"),
    OverloadedError: (503, "overloaded"),
    NotReadyError: (503, "not_ready"),
    RequestTimeoutError: (504, "timeout"),
}
INTERNAL = (500, "internal_error")
# What the service reports on purpose; anything else is a bug, logged with its traceback.
REPORTED: tuple[type[Exception], ...] = (
    ServiceError,
    ImageError,
    TensorError,
    RequestValidationError,
    HTTPException,
)


def classify(exc: Exception) -> tuple[int, str]:
    """HTTP status and error code of ``exc`` (routing errors keep their own status)."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    if isinstance(exc, HTTPException):
        return exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return INTERNAL


def message(exc: Exception) -> str:
    """The words of an error, as the JSON error bodies say them (/segment and /v2 alike)."""
    if isinstance(exc, ServiceError):
        return exc.message
    if isinstance(exc, TensorError):
        return str(exc)
    if isinstance(exc, ImageError):
        # contract.decode phrases its messages as predicates of the image.
        return f"the image {exc}"
    if isinstance(exc, RequestValidationError):
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "query")
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return "; ".join(problems) or "invalid request"
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return "internal error; the service logged the details"


def _headers(exc: Exception) -> dict[str, str]:
    return dict(getattr(exc, "headers", None) or {})


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Render any exception as the JSON error body of the contract."""
    # Unexpected exceptions reach here through Starlette's ServerErrorMiddleware, which
    # re-raises them after the response so that the server logs the traceback.
    status, code = classify(exc)
    body = {"error": {"code": code, "message": message(exc)}}
    return JSONResponse(body, status_code=status, headers=_headers(exc))


def protocol_error(exc: Exception) -> JSONResponse:
    """An error as the Open Inference Protocol words it, ``{"error": message}``, with the
    status of the one table."""
    status, _ = classify(exc)
    return JSONResponse({"error": message(exc)}, status_code=status, headers=_headers(exc))


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(
        description="For programs: bad_image, image_too_large, invalid_parameter, ... (one per "
        "kind of error; the same status may have several).",
        examples=["image_too_large"],
    )
    message: str = Field(
        description="For people: what is wrong and what to change.",
        examples=[
            "the image is 12000x12000 = 144000000 pixels; the limit is 100000000 pixels, "
            "set by FCN_MAX_PIXELS"
        ],
    )


class ErrorBody(BaseModel):
    """The body of every error the service answers outside /v2."""

    error: ErrorDetail


class ProtocolErrorBody(BaseModel):
    """An error as the Open Inference Protocol words it (/v2)."""

    error: str = Field(description="What is wrong and what to change.")


# What each error status means, wherever a route answers it (the codes: the table above).
MEANINGS: dict[int, str] = {
    400: "The image cannot be decoded, or the request breaks the protocol.",
    404: "No model of that name, or no such version of it, on this server.",
    406: "The Accept header names no format the service answers with.",
    408: "The body came too late or too slowly (FCN_UPLOAD_TIMEOUT_S, FCN_UPLOAD_MIN_RATE); "
    "the connection is closed.",
    413: "The body or the image is too large (FCN_MAX_UPLOAD_BYTES, FCN_MAX_PIXELS, or "
    "FCN_MAX_MODEL_PIXELS where the image cannot be tiled).",
    415: "Not a content type or image format the service reads.",
    422: "A parameter is wrong, or asks for an output the model lacks (format=confidence or "
    "min_confidence of a file exported without confidence); the message names it.",
    500: "The model failed on the batch this request was part of; the service goes on.",
    503: "Not ready (loading, warming up or draining) or overloaded: retry after Retry-After "
    "seconds.",
    504: "No result within FCN_REQUEST_TIMEOUT_S.",
}
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again (FCN_RETRY_AFTER_S).",
        "schema": {"type": "integer"},
    }
}


def responses(*statuses: int, protocol: bool = False) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI declaration of the errors a route answers: each status, its meaning and
    the error body (the protocol's, given ``protocol``)."""
    body = ProtocolErrorBody if protocol else ErrorBody
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        declared[status] = {"model": body, "description": MEANINGS[status]}
        if status == 503:
            declared[status]["headers"] = RETRY_AFTER
    return declared


def drop_default_422(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without the 422 FastAPI declares on every route with parameters: its body
    (``HTTPValidationError``) is never sent, since ``install`` answers validation errors with
    the service's own; the routes that can fail validation declare their 422 themselves."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            answers = operation.get("responses", {})
            if "HTTPValidationError" in str(answers.get("422", "")):
                del answers["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through ``handle_error``."""
    for cls in (*REPORTED, Exception):
        app.add_exception_handler(cls, handle_error)
