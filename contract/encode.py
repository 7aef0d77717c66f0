"""Label maps back to bytes: the palette PNG (pixel = class id, the PASCAL VOC way), the
overlay of the image and its class colours, and COCO run-length encoding.

``labels`` is H x W (uint8, or int32 above 255 classes); ``table`` is
``contract.palette.color_table``'s [>= 256, 3] uint8 colours. Both halves write with these
functions, so a label PNG or overlay is the same bytes whichever wrote it.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

ImageFormat = Literal["png", "jpeg"]
DEFAULT_ALPHA = 0.5
JPEG_QUALITY = 90
# zlib level 1: label maps are long runs, and level 1 encodes them several times faster than
# the default 6 for a few percent more bytes.
PNG_COMPRESS_LEVEL = 1
# Rows of an overlay blended at once.
STRIP_ROWS = 256


def as_labels(ids: NDArray[Any], num_classes: int) -> NDArray[Any]:
    """Class ids of any integer type as the contract's labels: uint8, int32 above 255."""
    dtype = np.uint8 if num_classes <= 255 else np.int32
    return ids if ids.dtype == dtype else ids.astype(dtype)


def encode_labels(
    labels: NDArray[Any], table: NDArray[np.uint8], compress_level: int = PNG_COMPRESS_LEVEL
) -> bytes:
    """The label map as a PNG, pixel = class id: a palette PNG coloured by ``table``, or
    16-bit grey when the labels are int32 (above 255 classes)."""
    if labels.dtype == np.uint8:
        picture = Image.fromarray(labels)
        picture.putpalette(table[:256].tobytes())
    else:
        picture = Image.fromarray(labels.astype(np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    alpha: float = DEFAULT_ALPHA,
) -> Image.Image:
    """``image`` blended with each pixel's class colour (``alpha`` = weight of the colours).

    Blended a strip of rows at a time into the one picture returned, so that a 100-megapixel
    overlay holds that picture and a strip, not the colours and the image again in full.
    """
    height, width = labels.shape
    if height <= STRIP_ROWS:
        return Image.blend(Image.fromarray(image), Image.fromarray(table[labels]), alpha)
    blended = Image.new("RGB", (width, height))
    for top in range(0, height, STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        colours = Image.fromarray(table[labels[rows]])
        blended.paste(Image.blend(Image.fromarray(image[rows]), colours, alpha), (0, top))
    return blended


def encode_overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    *,
    alpha: float = DEFAULT_ALPHA,
    image_format: ImageFormat = "jpeg",
    jpeg_quality: int = JPEG_QUALITY,
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """``overlay`` encoded as JPEG or PNG."""
    blended = overlay(image, labels, table, alpha)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        blended.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        blended.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def rle(labels: NDArray[Any]) -> dict[int, list[int]]:
    """COCO uncompressed RLE counts of each class present, in column-major (Fortran) order.

    Counts alternate background and class runs and start with background (possibly 0), as
    ``pycocotools.mask.encode`` writes them; they sum to H * W.
    """
    flat = labels.ravel(order="F")
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts]
    order = np.argsort(values, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(values[order])) + 1)
    result: dict[int, list[int]] = {}
    for runs in groups:
        s, e = starts[runs], ends[runs]
        counts = np.empty(2 * len(runs) + 1, dtype=np.int64)
        counts[0::2] = np.concatenate(([s[0]], s[1:] - e[:-1], [n - e[-1]]))
        counts[1::2] = e - s
        if counts[-1] == 0:
            counts = counts[:-1]
        result[int(values[runs[0]])] = counts.tolist()
    return result
