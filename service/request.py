"""HTTP in, plain values out: the body read under its limits of bytes, time and rate, the image
taken out of a multipart form or a raw body, the query checked, and the response format
negotiated.

The pipeline gets the image's bytes and one ``SegmentOptions``; it never sees HTTP.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from contract.encode import ImageFormat
from service.config import Format, Settings, TileMode
from service.errors import (
    BodyTooLargeError,
    InvalidParameterError,
    MalformedBodyError,
    NotAcceptableError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
)
from service.imaging import LabelEncoding
from service.maps import Output
from service.pipeline import AnswerFormat, SegmentOptions

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "image"
ACCEPTED_TYPES = ("multipart/form-data", "image/*", "application/octet-stream")
# A length as HTTP writes it: ASCII digits only (str.isdigit() takes "²", which int() refuses).
LENGTH = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class Upload:
    """How a body must arrive: ``max_bytes`` at most, whole within ``timeout_s`` of its first
    read, and once ``grace_s`` have passed at ``min_rate`` bytes a second on average at least
    (0: no floor), as Apache's mod_reqtimeout ``MinRate``; ``cut_off(reason)`` counts the
    bodies cut off."""

    max_bytes: int
    timeout_s: float
    min_rate: float = 0.0
    grace_s: float = 0.0
    cut_off: Callable[[str], None] = lambda reason: None

    def deadline(self, started: float, received: int) -> tuple[float, str]:
        """When a body begun at ``started`` with ``received`` bytes in is cut off, and why."""
        if self.min_rate > 0:
            # Each byte buys 1 / min_rate seconds beyond the grace period.
            slow = started + self.grace_s + received / self.min_rate
            if slow < started + self.timeout_s:
                return slow, "too_slow"
        return started + self.timeout_s, "timeout"

    def refusal(
        self, reason: str, elapsed: float, received: int, declared: int | None
    ) -> UploadTimeoutError:
        """The 408 of a body cut off for ``reason`` after ``elapsed`` s, ``received`` of its
        ``declared`` bytes in."""
        came = f"{received} of {declared} bytes" if declared is not None else f"{received} bytes"
        if reason == "too_slow":
            problem = (
                f"{came} came in {elapsed:.1f} s, {received / max(elapsed, 1e-3):.0f} bytes/s; "
                f"after {self.grace_s:g} s a body must come at {self.min_rate:g} bytes/s "
                "(FCN_UPLOAD_MIN_RATE)"
            )
        else:
            problem = (
                f"the body did not arrive within {self.timeout_s:g} s (FCN_UPLOAD_TIMEOUT_S): "
                f"{came} came"
            )
        return UploadTimeoutError(problem, reason=reason)


def declared_length(request: Request) -> int | None:
    """The Content-Length a request declares, None when it has none (chunked)."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and LENGTH.fullmatch(declared) else None


async def read_body(request: Request, upload: Upload) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``upload.max_bytes``,
    and cut off (408, the connection closed) when it comes too late or too slowly.

    The one place a request's body is read (/segment and /v2 alike); each route checks the
    headers it cares about before calling it.
    """
    limit = upload.max_bytes
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes; the limit is {limit}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks: list[bytes] = []
    size = 0
    when, reason = upload.deadline(started, size)
    try:
        async with asyncio.timeout_at(when) as timer:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    # Stop reading here: the rest of an oversized body is never received.
                    raise BodyTooLargeError(f"the body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                when, reason = upload.deadline(started, size)
                timer.reschedule(when)
    except TimeoutError:
        upload.cut_off(reason)
        raise upload.refusal(reason, loop.time() - started, size, declared) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _multipart_field(body: bytes, boundary: bytes, field: str) -> bytes:
    """The bytes of form field ``field`` (exactly one) of a multipart body."""
    found: list[bytearray] = []
    headers: dict[bytes, bytes] = {}
    header_name = bytearray()
    header_value = bytearray()
    target: bytearray | None = None  # the part being read, when it is the field
    ended = False

    def on_part_begin() -> None:
        nonlocal target
        headers.clear()
        target = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal target
        _, options = parse_options_header(headers.get(b"content-disposition"))
        if options.get(b"name") == field.encode():
            target = bytearray()
            found.append(target)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if target is not None:
            target.extend(data[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    callbacks: MultipartCallbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_end": on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedBodyError(f"malformed multipart/form-data body: {exc}") from exc
    if not ended:
        raise MalformedBodyError("the multipart/form-data body ends before its closing boundary")
    if len(found) != 1:
        problem = "has no field" if not found else f"has {len(found)} fields"
        raise InvalidParameterError(f"the multipart/form-data body {problem} named {field!r}")
    return bytes(found[0])


def _media(content_type: str | None) -> tuple[bytes, dict[bytes, bytes]]:
    """The media type and its options, when it is one we read (else 415)."""
    media, options = parse_options_header(content_type)
    readable = media in {b"multipart/form-data", b"application/octet-stream"}
    if not (readable or media.startswith(b"image/")):
        shown = media.decode("latin-1") or "no Content-Type"
        raise UnsupportedMediaTypeError(
            f"cannot read a body of {shown}; send {' or '.join(ACCEPTED_TYPES)}"
            f" (field {FIELD!r} for multipart)"
        )
    return media, options


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The encoded image in ``body``, given the request's Content-Type."""
    media, options = _media(content_type)
    if media != b"multipart/form-data":
        return body
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedBodyError("multipart/form-data without a boundary parameter")
    return _multipart_field(body, boundary, FIELD)


# What each Accept media type asks for: (format, overlay image format).
ACCEPTS: dict[str, tuple[Format, ImageFormat]] = {
    "image/png": ("png", "png"),
    "image/jpeg": ("overlay", "jpeg"),
    "application/json": ("json", "png"),
}


class SegmentQuery(BaseModel):
    """The query parameters of POST /segment; each description is what /docs shows.

    Options of one format (alpha, image_format and legend for overlays, label_encoding for
    JSON) are ignored by the others, so no combination of valid values is refused for being a
    combination; only the tile parameters depend on each other and on the model (422).
    """

    model_config = ConfigDict(extra="forbid")

    format: AnswerFormat | None = Field(
        None,
        description="What to answer: png, the label map as a palette PNG whose pixel values "
        "are class ids; overlay, the image blended with the class colours; json, the "
        "classes found, their pixel counts and the label map; confidence, a grey PNG of the "
        "top class's probability x 255 (a model exported with that output; 422 otherwise). "
        "Default: from the Accept header, else FCN_DEFAULT_FORMAT (png).",
    )
    output: Output = Field(
        "labels",
        description="Which map the answer is made of, in every format: labels, the classes; "
        "geometry, a two-head net's geometric classes (SIFT Flow's sky, horizontal, "
        "vertical; /v1/model lists them under geometry_classes). A model without that "
        "output answers 422.",
    )
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Overlays: the weight of the class colours, 0 (the image alone) to 1 "
        "(colours alone). Default: FCN_OVERLAY_ALPHA.",
    )
    image_format: ImageFormat | None = Field(
        None,
        description="Overlays: png or jpeg. Default: from the Accept header, else png.",
    )
    legend: bool = Field(
        False,
        description="Overlays: add a strip below the picture naming the classes present, "
        "in their colours, with their share of the pixels. Other formats ignore it (the "
        "JSON answer lists the classes itself).",
    )
    label_encoding: LabelEncoding = Field(
        "rle",
        description="JSON: the label map as rle (per-class run lengths) or png (a base64 "
        "palette PNG).",
    )
    max_side: int | None = Field(
        None,
        ge=1,
        description="Segment the image scaled down to this longest side at most (faster, "
        "coarser); the labels are scaled back to the image's own size. FCN_MAX_SIDE, when "
        "smaller, wins.",
    )
    tile: TileMode | None = Field(
        None,
        description="auto: cut into tiles only an image too large for one pass at the "
        "model (FCN_MAX_MODEL_PIXELS); always: tiles even for small images; never: refuse "
        "(413) what one pass cannot hold. Default: FCN_TILING.",
    )
    tile_size: int | None = Field(
        None,
        ge=1,
        description="The longest tile side. It must fit one pass (padded by 100 pixels on "
        "every side, at most FCN_MAX_MODEL_PIXELS) and exceed tile_overlap by twice the "
        "model's grid (fcn.tiling align, in /v1/model); else 422. Default: FCN_TILE_SIZE, "
        "else the largest that fits.",
    )
    tile_overlap: int | None = Field(
        None,
        ge=0,
        description="Pixels shared by neighbouring tiles, so that each label sees its "
        "context; must leave tiles of tile_size room (see tile_size). Default: "
        "FCN_TILE_OVERLAP.",
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Overlays: paint pixels whose confidence is below it in the unsure "
        "colour; json: the share of each class's pixels below it. Other formats ignore it. "
        "Needs a model with the confidence output (422 otherwise).",
    )


def negotiate(
    query: SegmentQuery, accept: str | None, default: Format
) -> tuple[AnswerFormat, ImageFormat]:
    """(format, overlay image format) from ?format=, else from the Accept header (highest q),
    else ``default``."""
    if query.format is not None:
        return query.format, query.image_format or "png"
    wildcard: tuple[AnswerFormat, ImageFormat] = (default, query.image_format or "png")
    if not accept or not accept.strip():
        return wildcard
    best: tuple[float, tuple[AnswerFormat, ImageFormat]] | None = None
    for item in accept.split(","):
        media, options = parse_options_header(item)
        try:
            q = float(options.get(b"q", b"1"))
        except ValueError:
            continue
        name = media.decode("latin-1")
        if q <= 0:
            continue
        choice: tuple[AnswerFormat, ImageFormat]
        if name in ACCEPTS:
            fmt, image_format = ACCEPTS[name]
            choice = (fmt, query.image_format or image_format)
        elif name in ("*/*", "image/*"):
            choice = wildcard
            if name == "image/*" and default == "json":
                choice = ("png", wildcard[1])
        else:
            continue
        if best is None or q > best[0]:
            best = (q, choice)
    if best is None:
        raise NotAcceptableError(
            f"cannot answer with any of {accept!r}; "
            "accept image/png, image/jpeg or application/json, or pass ?format="
        )
    return best[1]


def segment_options(query: SegmentQuery, accept: str | None, settings: Settings) -> SegmentOptions:
    """A request's options: its query, its Accept header where the query is silent, and the
    settings' defaults; of ?max_side= and FCN_MAX_SIDE the smaller wins."""
    fmt, image_format = negotiate(query, accept, settings.default_format)
    sides = [s for s in (settings.max_side, query.max_side or 0) if s > 0]
    return SegmentOptions(
        format=fmt,
        image_format=image_format,
        alpha=settings.overlay_alpha if query.alpha is None else query.alpha,
        legend=query.legend,
        label_encoding=query.label_encoding,
        max_side=min(sides) if sides else 0,
        tile=query.tile or settings.tiling,
        tile_size=settings.tile_size if query.tile_size is None else query.tile_size,
        tile_overlap=settings.tile_overlap if query.tile_overlap is None else query.tile_overlap,
        min_confidence=query.min_confidence,
        output=query.output,
    )


async def read_image(request: Request, upload: Upload) -> bytes:
    """The encoded image a request carries, its body read under ``upload``'s limits; multipart
    parsing runs off the event loop."""
    content_type = request.headers.get("content-type")
    media, _ = _media(content_type)  # 415 before a byte is read
    body = await read_body(request, upload)
    if media != b"multipart/form-data":
        return body
    return await anyio.to_thread.run_sync(image_bytes, content_type, body)
