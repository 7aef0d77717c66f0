"""HTTP parsing: the Content-Type, the body under its byte limit, multipart fields, the
query and Accept negotiation, as functions and through the real app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import Format
from service.errors import (
    InvalidParameterError,
    MalformedBodyError,
    NotAcceptableError,
    UnsupportedMediaTypeError,
)
from service.main import create_app
from service.pipeline import SegmentOptions
from service.request import SegmentQuery, image_bytes, negotiate, segment_options
from tests.service.support import (
    PNG,
    asgi_post,
    assert_error,
    running,
    serve,
    settings,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/json", "application/json"),
        ("image/jpeg", "image/jpeg"),
        ("image/png", "image/png"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "image/png"),
        ("image/png;q=0.5, application/json;q=0.9", "application/json"),
    ],
)
async def test_the_accept_header_selects_the_format(
    model_path: Path, accept: str, media_type: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(
            "/segment", content=PNG, headers={"content-type": "image/png", "accept": accept}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        # An explicit ?format= wins over Accept.
        explicit = await client.post(
            "/segment?format=png",
            content=PNG,
            headers={"content-type": "image/png", "accept": accept},
        )
        assert explicit.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("format=gif", "format"),
        ("alpha=1.5", "alpha"),
        ("alpha=abc", "alpha"),
        ("max_side=0", "max_side"),
        ("label_encoding=zip", "label_encoding"),
        ("image_format=bmp", "image_format"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    model_path: Path, query: str, field: str
) -> None:
    async with serve(model_path) as client:
        response = await client.post(f"/segment?{query}", files={"image": ("a", PNG)})
    assert field in assert_error(response, 422, "invalid_parameter")["message"]


async def test_an_oversized_body_is_never_read_whole(model_path: Path) -> None:
    app = create_app(settings(model_path, max_upload_bytes=5_000))
    async with running(app):
        chunks = [b"\x00" * 1_000] * 100  # 100 kB, streamed without a Content-Length
        status, body, pulled = await asgi_post(app, chunks, [(b"content-type", b"image/png")])
        assert status == 413
        assert json.loads(body)["error"]["code"] == "body_too_large"
        assert pulled <= 6
        # A declared Content-Length over the limit is refused before any chunk is read.
        headers = [(b"content-type", b"image/png"), (b"content-length", b"100000")]
        status, _, pulled = await asgi_post(app, chunks, headers)
        assert (status, pulled) == (413, 0)
        # So is a body of a type the service cannot read.
        status, _, pulled = await asgi_post(app, chunks, [(b"content-type", b"text/plain")])
        assert (status, pulled) == (415, 0)


def multipart(*parts: tuple[str, bytes], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body of (field name, bytes) parts."""
    body = b""
    for name, data in parts:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


def test_the_image_comes_out_of_a_raw_body_or_its_multipart_field() -> None:
    assert image_bytes("image/png", PNG) is PNG
    assert image_bytes("application/octet-stream", PNG) is PNG
    form = multipart(("note", b"hello"), ("image", PNG))
    assert image_bytes("multipart/form-data; boundary=b0undary", form) == PNG


@pytest.mark.parametrize(
    ("content_type", "body", "error", "words"),
    [
        ("text/plain", b"x", UnsupportedMediaTypeError, "cannot read a body of text/plain"),
        (None, b"x", UnsupportedMediaTypeError, "cannot read a body of no Content-Type"),
        ("multipart/form-data", b"x", MalformedBodyError, "without a boundary parameter"),
        (
            "multipart/form-data; boundary=b0undary",
            multipart(("image", PNG), ("image", PNG)),
            InvalidParameterError,
            "has 2 fields named 'image'",
        ),
        (
            "multipart/form-data; boundary=b0undary",
            multipart(("file", PNG)),
            InvalidParameterError,
            "has no field named 'image'",
        ),
    ],
    ids=["text", "no-type", "no-boundary", "two-images", "no-image"],
)
def test_bodies_without_one_image_are_refused_by_name(
    content_type: str | None, body: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        image_bytes(content_type, body)


def test_options_fill_in_the_settings_defaults(model_path: Path) -> None:
    defaults = settings(model_path, default_format="json", overlay_alpha=0.3, max_side=500)
    plain = segment_options(SegmentQuery(), None, defaults)
    assert plain == SegmentOptions("json", "png", 0.3, "rle", 500)
    assert plain.media_type == "application/json"
    # Of ?max_side= and FCN_MAX_SIDE the smaller wins; ?alpha= overrides the setting.
    asked = SegmentQuery(alpha=0.8, max_side=200, label_encoding="png")
    assert segment_options(asked, "image/jpeg", defaults) == SegmentOptions(
        "overlay", "jpeg", 0.8, "png", 200
    )
    assert segment_options(SegmentQuery(max_side=900), None, defaults).max_side == 500
    assert segment_options(SegmentQuery(max_side=900), None, settings(model_path)).max_side == 900
    assert segment_options(SegmentQuery(), None, settings(model_path)).max_side == 0


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, "png", ("png", "png")),
        ("", "overlay", ("overlay", "png")),
        ("image/*", "json", ("png", "png")),
        ("*/*", "json", ("json", "png")),
        ("image/jpeg;q=0.2, image/png;q=0.1", "png", ("overlay", "jpeg")),
        ("application/json;q=0, image/png", "png", ("png", "png")),
    ],
)
def test_accept_negotiation(accept: str | None, default: Format, expected: tuple[str, str]) -> None:
    assert negotiate(SegmentQuery(), accept, default) == expected


def test_an_accept_header_naming_nothing_we_produce_is_refused() -> None:
    with pytest.raises(NotAcceptableError, match="cannot answer with any of 'text/html'"):
        negotiate(SegmentQuery(), "text/html", "png")
    # ?format= needs no negotiation.
    assert negotiate(SegmentQuery(format="json"), "text/html", "png") == ("json", "png")
