"""The request body: read under a byte limit while it streams in, then the image taken out of it.

An image comes as the raw body (``image/*``, or ``application/octet-stream``) or as the
``image`` field of a ``multipart/form-data`` body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import (
    BadImageError,
    BodyTooLargeError,
    InvalidParameterError,
    UnsupportedMediaTypeError,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "image"
ACCEPTED_TYPES = ("multipart/form-data", "image/*", "application/octet-stream")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing a type we cannot read (415) before reading, and refusing
    (413) as soon as the body is known to exceed ``limit`` bytes."""
    _media(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Stop reading here: the rest of an oversized body is never received.
            raise BodyTooLargeError(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
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
        raise BadImageError(f"malformed multipart/form-data body: {exc}") from exc
    if not ended:
        raise BadImageError("the multipart/form-data body ends before its closing boundary")
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
        raise BadImageError("multipart/form-data without a boundary parameter")
    return _multipart_field(body, boundary, FIELD)
