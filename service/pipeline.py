"""One segmentation request end to end: decode, batch, predict, unbatch, encode (labels, and
the model's confidence where the answer uses it).

Decoding and encoding run on worker threads, within a budget of pixels, and inference on the
batcher's thread, so the event loop only moves bytes and answers probes.

An image too large for one pass at the model is cut into tiles (``contract.tiling``) that
go through the batcher a batch's worth at a time, so requests arriving meanwhile are run
between them. Its decoded pixels and label map live from decoding to encoding: tiled
requests hold them in a budget of their own, which small requests never wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from contract.decode import decode_picture, open_image
from contract.encode import (
    ImageFormat,
    below,
    encode_confidence,
    encode_labels,
    encode_overlay,
)
from contract.palette import color_table
from contract.schema import GEOMETRY, no_confidence
from contract.tiling import (
    DEFAULT_OVERLAP,
    TilePlan,
    TilingError,
    check_tiles,
    cut,
)
from service import imaging
from service.batching import Batcher, Disconnected, Ticket
from service.budget import PixelBudget
from service.config import Format, TileMode
from service.errors import InvalidParameterError, RequestTimeoutError
from service.fanout import predict_batches
from service.imaging import LabelEncoding
from service.maps import Output, check_output, drawn, place
from service.metrics import Metrics
from service.prediction import Prediction
from service.runtime import ModelInfo

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "json": "application/json"}
# What an answer can be: the settings' formats, and the confidence map (a grey PNG), which
# only files with the ``confidence`` output can give.
AnswerFormat = Literal[Format, "confidence"]


@dataclass(frozen=True)
class SegmentOptions:
    """Everything a request asks of the pipeline besides its image, defaults filled
    in (``service.request`` makes it from the query, the headers and the settings)."""

    format: AnswerFormat
    image_format: ImageFormat  # of overlays
    alpha: float  # overlays: the weight of the class colours
    label_encoding: LabelEncoding  # json
    max_side: int  # segment at this longest side at most; 0: full size
    legend: bool = False  # overlays: the classes present named below
    tile: TileMode = "auto"
    tile_size: int = 0  # longest tile side; 0: the largest one pass holds
    tile_overlap: int = DEFAULT_OVERLAP
    # overlays: paint pixels below it unsure; json: the share below it (a probability, 0-1)
    min_confidence: float | None = None
    # Which map every format is made of: the classes, or a two-head file's geometry.
    output: Output = "labels"

    @property
    def uses_confidence(self) -> bool:
        """Whether the answer reads the model's confidence (when it has it): the labels'."""
        labels = self.output != GEOMETRY
        return labels and (self.format in ("confidence", "json") or self.min_confidence is not None)

    @property
    def needs_confidence(self) -> bool:
        """Whether the answer cannot be made without the model's confidence."""
        return self.format == "confidence" or self.min_confidence is not None

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
        tiled_budget: PixelBudget,
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
        self.tiled_budget = tiled_budget
        self.max_pixels = max_pixels
        self.max_model_pixels = max_model_pixels
        self.request_timeout_s = request_timeout_s
        self.jpeg_quality = jpeg_quality
        self.png_compress_level = png_compress_level
        self.table = color_table(info.meta.palette)
        self.model = {"name": info.name, "arch": info.meta.arch, "version": info.version}

    def check_options(self, options: SegmentOptions) -> None:
        """Refuse (422) an answer this model cannot give, before its upload is read: the
        confidence of a file exported without it, the geometry of a one-head file, and the
        confidence of the geometry (the confidence is the labels')."""
        asked = "?format=confidence" if options.format == "confidence" else "?min_confidence="
        check_output(options.output, self.info, asked if options.needs_confidence else None)
        if options.needs_confidence and not self.info.meta.has_confidence:
            raise InvalidParameterError(f"{asked}: {no_confidence(f'model {self.info.name!r}')}")

    def check_tiling(self, tile_size: int, tile_overlap: int) -> int:
        """The longest tile side of these parameters; TilingError when they cannot work."""
        return check_tiles(
            max_pixels=self.max_model_pixels,
            overlap=tile_overlap,
            tiling=self.info.meta.tiling,
            tile_size=tile_size,
        )

    def plan(self, height: int, width: int, options: SegmentOptions) -> TilePlan | None:
        """How an image of H x W at the model is run: None for one pass, else its tiles;
        413 when it needs tiles that ``?tile=never`` forbids, 422 for tile parameters that
        cannot work."""
        try:
            if options.tile == "never":
                self.check_tiling(options.tile_size, options.tile_overlap)
                plan = None
            else:
                plan = cut(
                    height,
                    width,
                    max_pixels=self.max_model_pixels,
                    overlap=options.tile_overlap,
                    tiling=self.info.meta.tiling,
                    tile_size=options.tile_size,
                    always=options.tile == "always",
                )
        except TilingError as exc:
            raise InvalidParameterError(f"?{exc.parameter}=: {exc}") from None
        if plan is None:
            imaging.check_model_size(height, width, max_model_pixels=self.max_model_pixels)
        return plan

    def _encode(self, decoded: Decoded, prediction: Prediction, options: SegmentOptions) -> bytes:
        labels, table, classes = drawn(prediction, options.output, self.info, self.table)
        labels = imaging.enlarge(labels, decoded.height, decoded.width)
        confidence = None
        if options.uses_confidence and prediction.confidence is not None:
            confidence = imaging.enlarge(prediction.confidence, decoded.height, decoded.width)
        if options.format == "confidence":
            assert confidence is not None  # check_options refused models without it
            return encode_confidence(confidence, self.png_compress_level)
        unsure = None
        if options.min_confidence is not None:
            assert confidence is not None
            unsure = below(confidence, options.min_confidence)
        if options.format == "overlay":
            assert decoded.image is not None  # kept for overlays
            return encode_overlay(
                decoded.image,
                labels,
                table,
                alpha=options.alpha,
                image_format=options.image_format,
                jpeg_quality=self.jpeg_quality,
                compress_level=self.png_compress_level,
                legend_classes=classes if options.legend else None,
                unsure=unsure,
            )
        if options.format == "json":
            return imaging.encode_json(
                labels,
                classes=classes,
                table=table,
                model=self.model,
                label_encoding=options.label_encoding,
                compress_level=self.png_compress_level,
                confidence=confidence,
                min_confidence=options.min_confidence,
            )
        return encode_labels(labels, table, self.png_compress_level)

    @contextlib.asynccontextmanager
    async def _hold(
        self, budget: PixelBudget, pixels: int, deadline: float | None
    ) -> AsyncIterator[None]:
        """Hold ``pixels`` of ``budget``, waiting for them until ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                await budget.acquire(pixels)
        except TimeoutError:
            raise RequestTimeoutError.after(self.request_timeout_s) from None
        try:
            yield
        finally:
            budget.release(pixels)

    async def _predict(
        self,
        ticket: Ticket,
        image: NDArray[np.uint8],
        deadline: float,
        disconnected: Disconnected | None,
    ) -> Prediction:
        """The labels of ``image`` in one pass."""
        batches = predict_batches(
            self.batcher,
            ticket,
            [image],
            deadline=deadline,
            timeout_s=self.request_timeout_s,
            disconnected=disconnected,
        )
        (prediction,) = [p async for batch in batches for p in batch]
        return prediction

    async def _predict_tiles(
        self,
        ticket: Ticket,
        image: NDArray[np.uint8],
        plan: TilePlan,
        deadline: float,
        disconnected: Disconnected | None,
        *,
        with_confidence: bool,
        with_geometry: bool = False,
    ) -> Prediction:
        """Run the tiles a batch's worth at a time and stitch their labels (and, asked,
        their confidence, tile by tile as the labels)."""
        tiles = list(plan.tiles())
        out: NDArray[Any] | None = None
        confidence: NDArray[np.uint8] | None = None
        geometry: NDArray[np.uint8] | None = None
        queue_s = inference_s = 0.0
        largest = done = 0
        batches = predict_batches(
            self.batcher,
            ticket,
            [tile.window(image) for tile in tiles],
            deadline=deadline,
            timeout_s=self.request_timeout_s,
            disconnected=disconnected,
        )
        async with contextlib.aclosing(batches):
            async for predictions in batches:
                chunk = tiles[done : done + len(predictions)]
                done += len(chunk)
                self.metrics.tiles.inc(len(chunk))
                if out is None:
                    out = np.empty((plan.height, plan.width), dtype=predictions[0].labels.dtype)
                    if with_confidence:
                        confidence = np.empty((plan.height, plan.width), dtype=np.uint8)
                    if with_geometry:
                        geometry = np.empty((plan.height, plan.width), dtype=np.uint8)
                await anyio.to_thread.run_sync(place, chunk, predictions, out, confidence, geometry)
                queue_s += max(p.queue_s for p in predictions)
                inference_s += max(p.inference_s for p in predictions)
                largest = max(largest, *(p.batch_size for p in predictions))
        assert out is not None
        return Prediction(out, queue_s, inference_s, largest, confidence, geometry)

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
        self.check_options(options)
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        side = options.max_side
        keep_image = options.format == "overlay"
        # Reading the header takes milliseconds: off the event loop.
        picture = await anyio.to_thread.run_sync(open_image, data, self.max_pixels)
        async with contextlib.AsyncExitStack() as held:
            try:
                width, height = picture.size
                plan = self.plan(*imaging.reduced_size(height, width, side), options)
                if plan is None:
                    async with self._hold(self.budget, width * height, deadline):
                        decoded = await anyio.to_thread.run_sync(_decode, picture, side, keep_image)
                else:
                    # Held until the answer is encoded: the image and its label map.
                    await held.enter_async_context(
                        self._hold(self.tiled_budget, width * height, deadline)
                    )
                    decoded = await anyio.to_thread.run_sync(_decode, picture, side, keep_image)
            finally:
                picture.close()
            decoded_at = time.perf_counter()
            if plan is None:
                prediction = await self._predict(
                    ticket, decoded.model_input, deadline, disconnected
                )
            else:
                self.metrics.tiled_requests.inc()
                prediction = await self._predict_tiles(
                    ticket,
                    decoded.model_input,
                    plan,
                    deadline,
                    disconnected,
                    with_confidence=options.uses_confidence and self.info.meta.has_confidence,
                    with_geometry=options.output == GEOMETRY,
                )
            predicted = time.perf_counter()
            encoding = (
                self._hold(self.budget, decoded.height * decoded.width, None)
                if plan is None
                else contextlib.nullcontext()
            )
            async with encoding:
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
            "X-Tiles": str(1 if plan is None else plan.count),
        }
        return Result(content, options.media_type, headers)
