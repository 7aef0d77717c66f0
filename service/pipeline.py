"""One segmentation request end to end: decode, batch, predict, unbatch, encode.

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

from contract.decode import decode_picture, open_image
from contract.encode import ImageFormat, encode_labels, encode_overlay
from contract.palette import color_table
from service import imaging
from service.batching import Batcher, Disconnected, Prediction, Ticket
from service.budget import PixelBudget
from service.config import Format
from service.errors import RequestTimeoutError
from service.imaging import LabelEncoding
from service.metrics import Metrics
from service.runtime import ModelInfo

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "json": "application/json"}


@dataclass(frozen=True)
class SegmentOptions:
    """Everything a request asks of the pipeline besides its image, defaults filled
    in (``service.request`` makes it from the query, the headers and the settings)."""

    format: Format
    image_format: ImageFormat  # of overlays
    alpha: float  # overlays: the weight of the class colours
    label_encoding: LabelEncoding  # json
    max_side: int  # segment at this longest side at most; 0: full size

    @property
    def media_type(self) -> str:
        """Content-Type of the response."""
        if self.format == "json":
            return MEDIA_TYPES["json"]
        return MEDIA_TYPES[self.image_format if self.format == "overlay" else "png"]


@dataclass(frozen=True)
class Result:
    """An encoded response and its headers."""

    content: bytes
    media_type: str
    headers: dict[str, str]


def _millis(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


@dataclass(frozen=True)
class Decoded:
    """A request's image: its size, the array the model sees, the full one for overlays."""

    height: int
    width: int
    model_input: NDArray[np.uint8]  # H x W x 3, reduced to max_side
    image: NDArray[np.uint8] | None  # full size; kept only when the answer needs its pixels


def _decode(picture: Image.Image, max_side: int, keep_image: bool) -> Decoded:
    """Decode an opened picture and reduce it for the model."""
    image = decode_picture(picture)
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
        request_timeout_s: float,
        jpeg_quality: int,
        png_compress_level: int,
    ):
        self.info = info
        self.batcher = batcher
        self.metrics = metrics
        self.budget = budget
        self.max_pixels = max_pixels
        self.max_model_pixels = max_model_pixels
        self.request_timeout_s = request_timeout_s
        self.jpeg_quality = jpeg_quality
        self.png_compress_level = png_compress_level
        self.table = color_table(info.meta.palette)
        self.model = {"name": info.name, "arch": info.meta.arch, "version": info.version}

    def _encode(self, decoded: Decoded, prediction: Prediction, options: SegmentOptions) -> bytes:
        labels = imaging.enlarge(prediction.labels, decoded.height, decoded.width)
        if options.format == "overlay":
            assert decoded.image is not None  # kept for overlays
            return encode_overlay(
                decoded.image,
                labels,
                self.table,
                alpha=options.alpha,
                image_format=options.image_format,
                jpeg_quality=self.jpeg_quality,
                compress_level=self.png_compress_level,
            )
        if options.format == "json":
            return imaging.encode_json(
                labels,
                classes=self.info.meta.classes,
                table=self.table,
                model=self.model,
                label_encoding=options.label_encoding,
                compress_level=self.png_compress_level,
            )
        return encode_labels(labels, self.table, self.png_compress_level)

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
        data: bytes,
        options: SegmentOptions,
        ticket: Ticket,
        *,
        disconnected: Disconnected | None = None,
    ) -> Result:
        """Segment the encoded image ``data`` in the place ``ticket`` holds and encode the
        result as ``options`` say."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        side = options.max_side
        # Reading the header takes milliseconds: off the event loop.
        picture = await anyio.to_thread.run_sync(open_image, data, self.max_pixels)
        try:
            width, height = picture.size
            imaging.check_model_size(
                height, width, max_model_pixels=self.max_model_pixels, max_side=side
            )
            async with self._image_work(width * height, deadline):
                decoded = await anyio.to_thread.run_sync(
                    _decode, picture, side, options.format == "overlay"
                )
        finally:
            picture.close()
        decoded_at = time.perf_counter()
        remaining = self.request_timeout_s - (decoded_at - started)
        if remaining <= 0:
            raise self._late()
        try:
            prediction = await self.batcher.predict(
                ticket, decoded.model_input, timeout_s=remaining, disconnected=disconnected
            )
        except RequestTimeoutError:
            raise self._late() from None
        predicted = time.perf_counter()
        async with self._image_work(decoded.height * decoded.width, None):
            content = await anyio.to_thread.run_sync(self._encode, decoded, prediction, options)
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
        return Result(content, options.media_type, headers)
