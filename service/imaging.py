"""The service's own image work around the contract's decoding and encoding: sizes at the
model (conv1's padding, ``?max_side=``), resizing, and the JSON answer.

``image`` is H x W x 3 uint8 RGB; ``labels`` is H x W (uint8, int32 above 255 classes);
``confidence`` is H x W uint8 (the top class's probability x 255).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from contract.decode import ImageTooLargeError
from contract.encode import below, encode_labels, rle
from contract.schema import CONFIDENCE_SCALE
from contract.tiling import PAD, padded_pixels

LabelEncoding = Literal["rle", "png"]


def check_model_size(height: int, width: int, *, max_model_pixels: int) -> None:
    """Refuse (413) an untiled H x W (as the model sees it) above ``max_model_pixels`` padded."""
    padded = padded_pixels(height, width)
    if padded > max_model_pixels:
        raise ImageTooLargeError(
            f"would run at the model on {width}x{height}, padded by {PAD} on every "
            f"side to {width + 2 * PAD}x{height + 2 * PAD} = {padded} pixels; the limit for "
            f"one pass is {max_model_pixels} and tiling is off (?tile=never or FCN_TILING). "
            "Allow tiles, send a smaller image or set ?max_side="
        )


def reduced_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is at most ``max_side`` (0: unchanged)."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    """``image`` resized (antialiased bilinear) so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    size = reduced_size(height, width, max_side)
    if size == (height, width):
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def enlarge(labels: NDArray[Any], height: int, width: int) -> NDArray[Any]:
    """Nearest-neighbour resize of ``labels`` to H x W, sampling at pixel centres."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.intp), w - 1)
    enlarged: NDArray[Any] = labels[rows[:, None], cols[None, :]]
    return enlarged


def encode_json(
    labels: NDArray[Any],
    *,
    classes: Sequence[str],
    table: NDArray[np.uint8],
    model: dict[str, str],
    label_encoding: LabelEncoding,
    compress_level: int,
    confidence: NDArray[np.uint8] | None = None,
    min_confidence: float | None = None,
) -> bytes:
    """The JSON result: size, model, classes present with pixel counts, and the label map;
    given ``confidence``, each class's mean confidence and, given ``min_confidence``, the
    share of its pixels below it (the whole image's too)."""
    height, width = labels.shape
    total = height * width
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    runs = rle(labels) if label_encoding == "rle" else {}
    sums = unsure = None
    if confidence is not None:
        sums = np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=len(counts))
        if min_confidence is not None:
            low = below(confidence, min_confidence)
            unsure = np.bincount(labels[low], minlength=len(counts))
    present = []
    for class_id in np.flatnonzero(counts):
        entry: dict[str, Any] = {
            "id": int(class_id),
            "name": classes[int(class_id)] if class_id < len(classes) else str(class_id),
            "pixels": int(counts[class_id]),
            "fraction": round(float(counts[class_id]) / total, 6),
        }
        if sums is not None:
            mean = sums[class_id] / counts[class_id] / CONFIDENCE_SCALE
            entry["mean_confidence"] = round(float(mean), 6)
        if unsure is not None:
            share = unsure[class_id] / counts[class_id]
            entry["below_min_confidence"] = round(float(share), 6)
        if label_encoding == "rle":
            entry["rle"] = {"size": [height, width], "counts": runs[int(class_id)]}
        present.append(entry)
    body: dict[str, Any] = {
        "width": width,
        "height": height,
        "model": model,
        "label_encoding": label_encoding,
    }
    if sums is not None:
        body["mean_confidence"] = round(float(sums.sum()) / total / CONFIDENCE_SCALE, 6)
    if unsure is not None:
        body["min_confidence"] = min_confidence
        body["below_min_confidence"] = round(float(unsure.sum()) / total, 6)
    body["classes"] = present
    if label_encoding == "png":
        png = encode_labels(labels, table, compress_level)
        body["label_map"] = base64.b64encode(png).decode("ascii")
    return json.dumps(body, separators=(",", ":")).encode()
