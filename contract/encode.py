"""Label maps back to bytes: the palette PNG (pixel = class id, the PASCAL VOC way), the
overlay of the image and its class colours, and COCO run-length encoding.

``labels`` is H x W (uint8, or int32 above 255 classes); ``table`` is
``contract.palette.color_table``'s [>= 256, 3] uint8 colours. Both halves write with these
functions, so a label PNG or overlay is the same bytes whichever wrote it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

ImageFormat = Literal["png", "jpeg"]
DEFAULT_ALPHA = 0.5
JPEG_QUALITY = 90
# zlib level 1: label maps are long runs, and level 1 encodes them several times faster than
# the default 6 for a few percent more bytes.
PNG_COMPRESS_LEVEL = 1
# Rows of an overlay blended at once.
STRIP_ROWS = 256
# The legend's text height: a 30th of the overlay's shorter side, so that the legend keeps
# its share of the picture at any size (a screen scales a 4000x3000 overlay down as much as
# its legend), and never under 12 pixels, the least a small overlay stays legible at.
LEGEND_TEXT_SHARE = 30
LEGEND_TEXT_MIN_PX = 12
LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_INK = (0, 0, 0)


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


def present(labels: NDArray[Any], classes: Sequence[str]) -> list[tuple[int, str, float]]:
    """(class id, name, fraction of the pixels) of each class in ``labels``, most first."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    total = max(1, labels.size)
    ids = np.flatnonzero(counts[: len(classes)])
    found = [(int(i), classes[int(i)], float(counts[i]) / total) for i in ids]
    return sorted(found, key=lambda item: (-item[2], item[0]))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font (no file to ship): scalable where Pillow has FreeType."""
    try:
        return ImageFont.load_default(size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: its bitmap font
        return ImageFont.load_default()


def legend(
    labels: NDArray[Any], table: NDArray[np.uint8], classes: Sequence[str], width: int
) -> Image.Image:
    """A strip ``width`` wide naming the classes present in ``labels``, most first: a swatch
    of each class colour, its name and its share of the pixels, wrapped onto more rows as
    needed; its text scales with the overlay's shorter side."""
    shorter = min(labels.shape[0], width)
    size = max(round(shorter / LEGEND_TEXT_SHARE), LEGEND_TEXT_MIN_PX)
    font = _font(size)
    pad = size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = []  # (colour, text, text width)
    for class_id, name, fraction in present(labels, classes):
        text = f"{name} {100 * fraction:.1f}%"
        left, _, right, _ = measure.textbbox((0, 0), text, font=font)
        entries.append((tuple(int(v) for v in table[class_id]), text, int(right - left)))
    rows: list[list[tuple[tuple[int, ...], str, int]]] = [[]]
    used = pad
    for entry in entries:
        span = size + pad + entry[2] + 2 * pad  # swatch, gap, text, gap to the next
        if rows[-1] and used + span > width:
            rows.append([])
            used = pad
        rows[-1].append(entry)
        used += span
    line = size + pad
    strip = Image.new("RGB", (width, pad + line * len(rows)), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = pad, pad + r * line
        for colour, text, text_width in row:
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=colour, outline=LEGEND_INK)
            draw.text((x + size + pad, y), text, fill=LEGEND_INK, font=font)
            x += size + pad + text_width + 2 * pad
    return strip


def with_legend(
    blended: Image.Image, labels: NDArray[Any], table: NDArray[np.uint8], classes: Sequence[str]
) -> Image.Image:
    """``blended`` with ``legend`` below it."""
    strip = legend(labels, table, classes, blended.width)
    both = Image.new("RGB", (blended.width, blended.height + strip.height))
    both.paste(blended, (0, 0))
    both.paste(strip, (0, blended.height))
    return both


def encode_overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    *,
    alpha: float = DEFAULT_ALPHA,
    image_format: ImageFormat = "jpeg",
    jpeg_quality: int = JPEG_QUALITY,
    compress_level: int = PNG_COMPRESS_LEVEL,
    legend_classes: Sequence[str] | None = None,
) -> bytes:
    """``overlay`` encoded as JPEG or PNG; with ``legend_classes`` (the class names), the
    legend of the classes present below it."""
    blended = overlay(image, labels, table, alpha)
    if legend_classes is not None:
        blended = with_legend(blended, labels, table, legend_classes)
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
