"""Image bytes to RGB arrays and label maps back to bytes: pure functions on numpy and Pillow.

``image`` is H x W x 3 uint8 RGB; ``labels`` is H x W (uint8, int32 above 255 classes);
``picture`` is a Pillow image.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadImageError, ImageTooLargeError, UnsupportedMediaTypeError

# Pillow's names of the formats we read, and their media types.
FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
# Transparent pixels are composited over white, as a browser shows them.
BACKGROUND = (255, 255, 255)
ImageFormat = Literal["png", "jpeg"]
LabelEncoding = Literal["rle", "png"]
# Pillow raises any of these on corrupt or truncated files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)
# conv1_1 pads every side by 100 (the reference nets), so the model's memory and time follow
# (H + 200) x (W + 200), not H x W: a 1 x 50,000 image costs as much as a 201 x 50,200 one.
PAD = 100


def sniff(data: bytes) -> str | None:
    """The Pillow format name of ``data`` from its magic bytes, or None if we do not read it."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    return None


def guard_bombs() -> None:
    """Make Pillow's decompression-bomb warning an error everywhere, so it is refused (413)."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily and check its size from the header, before any pixel is decoded."""
    if not data:
        raise BadImageError("the body is empty; send the image bytes")
    kind = sniff(data)
    if kind is None:
        names = ", ".join(FORMATS)
        raise UnsupportedMediaTypeError(f"not an image format the service reads ({names})")
    try:
        picture = Image.open(io.BytesIO(data), formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError(f"starts like a {kind} file but is not a readable one") from exc
    except DECODE_ERRORS as exc:
        raise BadImageError(f"cannot read the {kind} header: {exc}") from exc
    width, height = picture.size
    if width * height > max_pixels:
        picture.close()
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return picture


def padded_pixels(height: int, width: int) -> int:
    """The pixels the model really processes for one H x W image: conv1's padding included."""
    return (height + 2 * PAD) * (width + 2 * PAD)


def check_model_size(height: int, width: int, *, max_model_pixels: int, max_side: int) -> None:
    """Refuse (413) an image whose padded size at the model exceeds ``max_model_pixels``."""
    model_height, model_width = reduced_size(height, width, max_side)
    padded = padded_pixels(model_height, model_width)
    if padded > max_model_pixels:
        raise ImageTooLargeError(
            f"the model would run on {model_width}x{model_height}, padded by {PAD} on every "
            f"side to {model_width + 2 * PAD}x{model_height + 2 * PAD} = {padded} pixels; "
            f"the limit is {max_model_pixels}. Send a smaller image or set ?max_side="
        )


def to_rgb(picture: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit scaled down, alpha composited over white."""
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit samples keep their top byte; 32-bit integers are read as 16-bit; floats in
        # [0, 1] are scaled to 0-255, larger ones read as 0-255.
        values = np.asarray(picture)
        if mode == "F":
            values = np.nan_to_num(values)
            if values.size and values.max() <= 1.0:
                values = values * 255.0
            gray = np.clip(values, 0, 255).astype(np.uint8)
        else:
            gray = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in picture.info
    ):
        rgba = picture.convert("RGBA")
        low, _ = rgba.getchannel("A").getextrema()
        if low == 255:
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return picture
    return picture.convert("RGB")


def decode_picture(picture: Image.Image) -> NDArray[np.uint8]:
    """An opened picture's pixels as H x W x 3 uint8 RGB, EXIF orientation applied; closes it."""
    kind = picture.format
    try:
        picture.load()
        # In place: the copy exif_transpose makes otherwise doubles the peak of every decode.
        ImageOps.exif_transpose(picture, in_place=True)
        return np.asarray(to_rgb(picture), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"refused as a decompression bomb: {exc}") from exc
    except DECODE_ERRORS as exc:
        raise BadImageError(f"cannot decode the {kind} image: {exc}") from exc
    finally:
        picture.close()


def decode(data: bytes, max_pixels: int) -> NDArray[np.uint8]:
    """Encoded image bytes -> H x W x 3 uint8 RGB, EXIF orientation applied, first frame only."""
    return decode_picture(open_image(data, max_pixels))


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


def color_table(palette: Sequence[Sequence[int]], num_classes: int) -> NDArray[np.uint8]:
    """[max(256, C), 3] uint8 class colours: the palette, then black."""
    table = np.zeros((max(256, num_classes), 3), dtype=np.uint8)
    if palette:
        colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[: len(table)]
        table[: len(colors)] = colors
    return table


def encode_labels(labels: NDArray[Any], table: NDArray[np.uint8], compress_level: int) -> bytes:
    """The label map as a PNG, pixel = class id: palette PNG, or 16-bit grey above 255 classes."""
    if labels.dtype == np.uint8:
        picture = Image.fromarray(labels)
        picture.putpalette(table[:256].tobytes())
    else:
        picture = Image.fromarray(labels.astype(np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def encode_overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    table: NDArray[np.uint8],
    *,
    alpha: float,
    image_format: ImageFormat,
    jpeg_quality: int,
    compress_level: int,
) -> bytes:
    """``image`` blended with its class colours (``alpha`` = weight of the colours)."""
    blended = Image.blend(Image.fromarray(image), Image.fromarray(table[labels]), alpha)
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


def encode_json(
    labels: NDArray[Any],
    *,
    classes: Sequence[str],
    table: NDArray[np.uint8],
    model: dict[str, str],
    label_encoding: LabelEncoding,
    compress_level: int,
) -> bytes:
    """The JSON result: size, model, classes present with pixel counts, and the label map."""
    height, width = labels.shape
    total = height * width
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    runs = rle(labels) if label_encoding == "rle" else {}
    present = []
    for class_id in np.flatnonzero(counts):
        entry: dict[str, Any] = {
            "id": int(class_id),
            "name": classes[int(class_id)] if class_id < len(classes) else str(class_id),
            "pixels": int(counts[class_id]),
            "fraction": round(float(counts[class_id]) / total, 6),
        }
        if label_encoding == "rle":
            entry["rle"] = {"size": [height, width], "counts": runs[int(class_id)]}
        present.append(entry)
    body: dict[str, Any] = {
        "width": width,
        "height": height,
        "model": model,
        "label_encoding": label_encoding,
        "classes": present,
    }
    if label_encoding == "png":
        png = encode_labels(labels, table, compress_level)
        body["label_map"] = base64.b64encode(png).decode("ascii")
    return json.dumps(body, separators=(",", ":")).encode()
