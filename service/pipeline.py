"""One segmentation request end to end: negotiate, decode, batch, predict, unbatch, encode.

Decoding and encoding run on worker threads, within a budget of pixels, and inference on the
batcher's thread, so the event loop only moves bytes and answers probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.multipart import parse_options_header

from service import imaging, uploads
from service.batching import Batcher, Disconnected, Prediction
from service.budget import PixelBudget
from service.config import Format
from service.errors import NotAcceptableError, RequestTimeoutError
from service.imaging import ImageFormat, LabelEncoding
from service.metrics import Metrics
from service.runtime import ModelInfo

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "json": "application/json"}
# What each Accept media type asks for: (format, overlay image format).
ACCEPTS: dict[str, tuple[Format, ImageFormat]] = {
    "image/png": ("png", "png"),
    "image/jpeg": ("overlay", "jpeg"),
    "application/json": ("json", "png"),
}


class SegmentQuery(BaseModel):
    """The query parameters of POST /segment."""

    model_config = ConfigDict(extra="forbid")

    format: Format | None = Field(
        None, description="png (label map), overlay or json; default from Accept, then png."
    )
    alpha: float | None = Field(None, ge=0, le=1, description="Overlay: weight of the colours.")
    image_format: ImageFormat | None = Field(None, description="Overlay: png or jpeg.")
    label_encoding: LabelEncoding = Field("rle", description="JSON: label map as rle or png.")
    max_side: int | None = Field(
        None, ge=1, description="Segment at this longest side at most; labels scaled back."
    )


@dataclass(frozen=True)
class Choice:
    """The response format a request gets."""

    format: Format
    image_format: ImageFormat

    @property
    def media_type(self) -> str:
        """Content-Type of the response."""
        if self.format == "json":
            return MEDIA_TYPES["json"]
        return MEDIA_TYPES[self.image_format if self.format == "overlay" else "png"]


def negotiate(query: SegmentQuery, accept: str | None, default: Format) -> Choice:
    """The format from ?format=, else from the Accept header (highest q), else ``default``."""
    if query.format is not None:
        return Choice(query.format, query.image_format or "png")
    wildcard = Choice(default, query.image_format or "png")
    if not accept or not accept.strip():
        return wildcard
    best: tuple[float, Choice] | None = None
    for item in accept.split(","):
        media, options = parse_options_header(item)
        try:
            q = float(options.get(b"q", b"1"))
        except ValueError:
            continue
        name = media.decode("latin-1")
        if q <= 0:
            continue
        if name in ACCEPTS:
            fmt, image_format = ACCEPTS[name]
            choice = Choice(fmt, query.image_format or image_format)
        elif name in ("*/*", "image/*"):
            choice = wildcard
            if name == "image/*" and default == "json":
                choice = Choice("png", wildcard.image_format)
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


@dataclass(frozen=True)
class Result:
    """An encoded response and its headers."""

    content: bytes
    media_type: str
    headers: dict[str, str]


def _millis(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _open(body: bytes, content_type: str | None, max_pixels: int) -> Image.Image:
    """The image out of the body, opened: its size read from the header, no pixel decoded."""
    return imaging.open_image(uploads.image_bytes(content_type, body), max_pixels)


@dataclass(frozen=True)
class Decoded:
    """A request's image: its size, the array the model sees, the full one for overlays."""

    height: int
    width: int
    model_input: NDArray[np.uint8]  # H x W x 3, reduced to max_side
    image: NDArray[np.uint8] | None  # full size; kept only when the answer needs its pixels


def _decode(picture: Image.Image, max_side: int, keep_image: bool) -> Decoded:
    """Decode an opened picture and reduce it for the model."""
    image = imaging.decode_picture(picture)
    height, width = image.shape[:2]
    return Decoded(height, width, imaging.shrink(image, max_side), image if keep_image else None)


class Segmenter:
    """Runs the pipeline for the routes; holds the model's palette and the encoding options."""

    def __init__(
        self,
        info: ModelInfo,
        batcher: Batcher,
        metrics: Metrics,
        budget: PixelBudget,
        *,
        max_pixels: int,
        max_model_pixels: int,
        max_side: int,
        request_timeout_s: float,
        overlay_alpha: float,
        jpeg_quality: int,
        png_compress_level: int,
    ):
        self.info = info
        self.batcher = batcher
        self.metrics = metrics
        self.budget = budget
        self.max_pixels = max_pixels
        self.max_model_pixels = max_model_pixels
        self.max_side = max_side
        self.request_timeout_s = request_timeout_s
        self.overlay_alpha = overlay_alpha
        self.jpeg_quality = jpeg_quality
        self.png_compress_level = png_compress_level
        self.table = imaging.color_table(info.palette, len(info.classes))
        self.model = {"name": info.name, "arch": info.arch, "version": info.version}

    def _side(self, requested: int | None) -> int:
        sides = [s for s in (self.max_side, requested or 0) if s > 0]
        return min(sides) if sides else 0

    def _encode(
        self, decoded: Decoded, prediction: Prediction, query: SegmentQuery, choice: Choice
    ) -> bytes:
        labels = imaging.enlarge(prediction.labels, decoded.height, decoded.width)
        if choice.format == "overlay":
            assert decoded.image is not None  # kept for overlays
            alpha = self.overlay_alpha if query.alpha is None else query.alpha
            return imaging.encode_overlay(
                decoded.image,
                labels,
                self.table,
                alpha=alpha,
                image_format=choice.image_format,
                jpeg_quality=self.jpeg_quality,
                compress_level=self.png_compress_level,
            )
        if choice.format == "json":
            return imaging.encode_json(
                labels,
                classes=self.info.classes,
                table=self.table,
                model=self.model,
                label_encoding=query.label_encoding,
                compress_level=self.png_compress_level,
            )
        return imaging.encode_labels(labels, self.table, self.png_compress_level)

    def _late(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"no result within {self.request_timeout_s:g} s (FCN_REQUEST_TIMEOUT_S); retry later"
        )

    @contextlib.asynccontextmanager
    async def _image_work(self, pixels: int, deadline: float | None) -> AsyncIterator[None]:
        """Hold ``pixels`` of the image-work budget, waiting for it until ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                await self.budget.acquire(pixels)
        except TimeoutError:
            raise self._late() from None
        try:
            yield
        finally:
            self.budget.release(pixels)

    async def segment(
        self,
        body: bytes,
        content_type: str | None,
        query: SegmentQuery,
        choice: Choice,
        *,
        disconnected: Disconnected | None = None,
    ) -> Result:
        """Segment the image in a request body and encode the result as ``choice`` says."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        side = self._side(query.max_side)
        with self.batcher.incoming():
            # Multipart parsing and header reading take milliseconds: off the event loop.
            picture = await anyio.to_thread.run_sync(_open, body, content_type, self.max_pixels)
            try:
                width, height = picture.size
                imaging.check_model_size(
                    height, width, max_model_pixels=self.max_model_pixels, max_side=side
                )
                async with self._image_work(width * height, deadline):
                    decoded = await anyio.to_thread.run_sync(
                        _decode, picture, side, choice.format == "overlay"
                    )
            finally:
                picture.close()
        decoded_at = time.perf_counter()
        remaining = self.request_timeout_s - (decoded_at - started)
        if remaining <= 0:
            raise self._late()
        try:
            prediction = await self.batcher.predict(
                decoded.model_input, timeout_s=remaining, disconnected=disconnected
            )
        except RequestTimeoutError:
            raise self._late() from None
        predicted = time.perf_counter()
        async with self._image_work(decoded.height * decoded.width, None):
            content = await anyio.to_thread.run_sync(
                self._encode, decoded, prediction, query, choice
            )
        encoded = time.perf_counter()
        stages: dict[str, Any] = {
            "decode": decoded_at - started,
            "queue": prediction.queue_s,
            "inference": prediction.inference_s,
            "encode": encoded - predicted,
        }
        for stage, seconds in stages.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        headers = {
            "X-Model-Version": self.info.version,
            "X-Decode-Time-Ms": _millis(stages["decode"]),
            "X-Queue-Time-Ms": _millis(stages["queue"]),
            "X-Inference-Time-Ms": _millis(stages["inference"]),
            "X-Encode-Time-Ms": _millis(stages["encode"]),
            "X-Batch-Size": str(prediction.batch_size),
        }
        return Result(content, choice.media_type, headers)
