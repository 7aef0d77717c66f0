"""Label maps (palette PNGs, pixel = class id, the VOC way), confidence maps and overlays
written to files, encoded by ``contract`` as the service encodes them, for ``fcn predict``
and ``fcn eval``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract import encode
from contract.palette import Color, color_table
from model.files import atomic_path


def write_label_png(labels: NDArray[Any], palette: Sequence[Color], path: Path) -> Path:
    """A palette PNG whose pixel values are the class ids (16-bit grey past 255 classes)."""
    labels = encode.as_labels(labels, len(palette))
    data = encode.encode_labels(labels, color_table(palette))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_confidence_png(confidence: NDArray[np.uint8], path: Path) -> Path:
    """An 8-bit grey PNG of the confidence (the top class's probability x 255)."""
    data = encode.encode_confidence(confidence)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    palette: Sequence[Color],
    path: Path,
    alpha: float = encode.DEFAULT_ALPHA,
    *,
    legend_classes: Sequence[str] | None = None,
) -> Path:
    """The image blended with its class colours, as JPEG (``.jpg``) or PNG (other suffixes);
    with ``legend_classes``, the legend of the classes present below it."""
    image_format: encode.ImageFormat = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    data = encode.encode_overlay(
        image,
        labels,
        color_table(palette),
        alpha=alpha,
        image_format=image_format,
        legend_classes=legend_classes,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
