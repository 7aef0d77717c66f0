"""Label maps back to bytes: the palette PNG (pixel = class id, the PASCAL VOC way), the
confidence PNG, the overlay of the image and its class colours (pixels below a confidence in
one "unsure" colour), and COCO run-length encoding.

``labels`` is H x W (uint8, or int32 above 255 classes); ``confidence`` is H x W uint8 (the top
class's probability x 255); ``table`` is ``contract.palette.color_table``'s [>= 256, 3] uint8
colours. Both halves write with these functions, so a PNG or overlay is the same bytes
whichever wrote it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from contract.palette import IGNORE_COLOR
from contract.schema import CONFIDENCE_SCALE

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
# Pixels below ?min_confidence= are painted in one colour, VOC's for the pixels it leaves
# unlabelled, and named so in the legend.
UNSURE_COLOR = IGNORE_COLOR
UNSURE_NAME = "unsure"


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


def encode_confidence(
    confidence: NDArray[np.uint8], compress_level: int = PNG_COMPRESS_LEVEL
) -> bytes:
    """The confidence map as an 8-bit grey PNG: 0 unsure of every class, 255 certain."""
    buffer = io.BytesIO()
    Image.fromarray(confidence).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def confidence_limit(min_confidence: float) -> int:
    """The smallest confidence value (0-255) at or above ``min_confidence`` (a probability,
    0 to 1): the one rule for ``?min_confidence=`` and ``fcn eval``'s coverage levels."""
    # A value v is at or above t when v >= 255 t; rounding first keeps 0.2 x 255 at 51.
    return math.ceil(round(min_confidence * CONFIDENCE_SCALE, 6))


def below(confidence: NDArray[np.uint8], min_confidence: float) -> NDArray[np.bool_]:
    """The pixels whose confidence is below ``min_confidence`` (a probability, 0 to 1)."""
    below_limit: NDArray[np.bool_] = confidence < confidence_limit(min_confidence)
    return below_limit


def _colours(
    labels: NDArray[Any], table: NDArray[np.uint8], unsure: NDArray[np.bool_] | None
) -> NDArray[np.uint8]:
    colours: NDArray[np.uint8] = table[labels]
    if unsure is not None:
        colours[unsure] = UNSURE_COLOR
    return colours


def overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    alpha: float = DEFAULT_ALPHA,
    unsure: NDArray[np.bool_] | None = None,
) -> Image.Image:
    """``image`` blended with each pixel's class colour (``alpha`` = weight of the colours),
    or with ``UNSURE_COLOR`` where ``unsure`` (H x W) is set.

    Blended a strip of rows at a time into the one picture returned, so that a 100-megapixel
    overlay holds that picture and a strip, not the colours and the image again in full.
    """
    height, width = labels.shape
    if height <= STRIP_ROWS:
        colours = _colours(labels, table, unsure)
        return Image.blend(Image.fromarray(image), Image.fromarray(colours), alpha)
    blended = Image.new("RGB", (width, height))
    for top in range(0, height, STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        strip = _colours(labels[rows], table, None if unsure is None else unsure[rows])
        picture = Image.blend(Image.fromarray(image[rows]), Image.fromarray(strip), alpha)
        blended.paste(picture, (0, top))
    return blended


def present(
    labels: NDArray[Any], classes: Sequence[str], unsure: NDArray[np.bool_] | None = None
) -> list[tuple[int, str, float]]:
    """(class id, name, fraction of the pixels) of each class in ``labels``, most first; the
    pixels ``unsure`` marks are counted for no class."""
    counted = labels.ravel() if unsure is None else labels[~unsure]
    counts = np.bincount(counted, minlength=len(classes))
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
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    classes: Sequence[str],
    width: int,
    unsure: NDArray[np.bool_] | None = None,
) -> Image.Image:
    """A strip ``width`` wide naming the classes present in ``labels``, most first: a swatch
    of each class colour, its name and its share of the pixels, wrapped onto more rows as
    needed; then, when ``unsure`` marks any pixel, the unsure colour and its share. Its text
    scales with the overlay's shorter side."""
    shorter = min(labels.shape[0], width)
    size = max(round(shorter / LEGEND_TEXT_SHARE), LEGEND_TEXT_MIN_PX)
    font = _font(size)
    pad = size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = []  # (colour, text, text width)
    shares = [
        (tuple(int(v) for v in table[i]), name, f)
        for i, name, f in present(labels, classes, unsure)
    ]
    if unsure is not None and unsure.any():
        shares.append((UNSURE_COLOR, UNSURE_NAME, float(unsure.mean())))
    for colour, name, fraction in shares:
        text = f"{name} {100 * fraction:.1f}%"
        left, _, right, _ = measure.textbbox((0, 0), text, font=font)
        entries.append((colour, text, int(right - left)))
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
    blended: Image.Image,
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    classes: Sequence[str],
    unsure: NDArray[np.bool_] | None = None,
) -> Image.Image:
    """``blended`` with ``legend`` below it."""
    strip = legend(labels, table, classes, blended.width, unsure)
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
    unsure: NDArray[np.bool_] | None = None,
) -> bytes:
    """``overlay`` encoded as JPEG or PNG (``unsure`` pixels in ``UNSURE_COLOR``); with
    ``legend_classes`` (the class names), the legend of the classes present below it."""
    blended = overlay(image, labels, table, alpha, unsure)
    if legend_classes is not None:
        blended = with_legend(blended, labels, table, legend_classes, unsure)
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
