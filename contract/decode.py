"""Any image a user has, as the RGB array the network sees: one rule per kind of file.

- Formats: JPEG, PNG, WebP, BMP, TIFF, GIF, told by their magic bytes, not by a name or a
  declared type; anything else is refused before Pillow guesses at it. GIFs and other
  multi-frame files give their first frame.
- EXIF orientation is applied, as a viewer shows the photo.
- 16-bit samples (PNG, TIFF) keep their high byte: 32768 becomes 128, 65535 becomes 255.
  32-bit integers are read on the 16-bit scale; floats in [0, 1] are scaled to 0-255,
  larger ones read as 0-255.
- Transparency (RGBA, LA, palette with a transparent index) is composited over white, as a
  browser shows it; the colour hidden under a transparent pixel never reaches the network.
- Palette, grayscale and CMYK become RGB by Pillow's conversion (palette colours; equal
  channels; CMYK without an ICC profile, as Pillow converts it).

Bytes and files go through the same steps, so a file segmented by ``fcn predict`` and the
same file posted to the service reach the network as the same array.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

# The most pixels (width x height) either half decodes unless told: a 10,000 x 10,000 raster.
DEFAULT_MAX_PIXELS = 100_000_000
# What sets that limit, as a refusal names it: the service's setting, unless a caller (the
# CLI) names its own flag.
MAX_PIXELS_SETTING = "FCN_MAX_PIXELS"
# Pillow's words for a bomb: "Image size (N pixels) exceeds limit of L pixels, ...".
BOMB_SIZE = re.compile(r"\((\d+) pixels\)")
# The process's limit as guard_bombs set it, for bombs Pillow finds after the header check.
GUARD: dict[str, Any] = {"max_pixels": None, "setting": MAX_PIXELS_SETTING}
# Pillow's names of the formats we read, and their media types.
FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
SNIFF_BYTES = 12
# Transparent pixels are composited over white, as a browser shows them.
BACKGROUND = (255, 255, 255)
# Pillow raises any of these on corrupt or truncated files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

Source = bytes | str | os.PathLike[str]


class ImageError(ValueError):
    """An image that cannot be decoded; the message says why."""


class UnsupportedImageError(ImageError):
    """Not a format we read."""


class CorruptImageError(ImageError):
    """Starts like an image we read but cannot be decoded (corrupt, truncated, empty)."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed, or a decompression bomb."""


def too_many_pixels(
    pixels: int, max_pixels: int, setting: str = MAX_PIXELS_SETTING, size: str = ""
) -> ImageTooLargeError:
    """The one refusal of an image over the pixel limit: its size, the limit in force and the
    setting (or flag) that sets it; ``size`` is "WxH = " where the header gave it."""
    return ImageTooLargeError(
        f"is {size}{pixels} pixels; the limit is {max_pixels} pixels, set by {setting}"
    )


def _bomb(exc: Exception, max_pixels: int | None, setting: str) -> ImageTooLargeError:
    """Pillow's decompression-bomb refusal in the project's words: the limit in force and what
    sets it (``max_pixels`` and ``setting``; Pillow's own threshold when no limit is given)."""
    found = BOMB_SIZE.search(str(exc))
    pixels = int(found[1]) if found else None
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        if pixels is None:
            return ImageTooLargeError(
                f"has more pixels than the limit of {max_pixels}, set by {setting}"
            )
        return too_many_pixels(pixels, max_pixels, setting)
    # No limit of ours was passed, or Pillow's threshold is the tighter one.
    threshold = Image.MAX_IMAGE_PIXELS
    return ImageTooLargeError(
        f"is {pixels if pixels is not None else 'too many'} pixels, over Pillow's "
        f"decompression-bomb limit of {threshold} (PIL.Image.MAX_IMAGE_PIXELS)"
    )


def sniff(head: bytes) -> str | None:
    """The Pillow format name from the first bytes of a file, or None if we do not read it."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def guard_bombs(max_pixels: int | None = None, setting: str = MAX_PIXELS_SETTING) -> None:
    """Make Pillow's decompression-bomb warning an error everywhere, so it is refused, and
    raise its threshold (a process-wide setting) to ``max_pixels`` when that is higher, so
    that the limit the process chose is the one that holds; a bomb found while decoding is
    then refused in the words of that limit and ``setting``."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    if max_pixels is not None and max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        Image.MAX_IMAGE_PIXELS = max_pixels
    GUARD.update(max_pixels=max_pixels, setting=setting)


def _head(source: Source) -> bytes:
    """The first bytes of ``source``, enough to tell its format."""
    if isinstance(source, bytes):
        return source[:SNIFF_BYTES]
    try:
        with open(source, "rb") as f:
            return f.read(SNIFF_BYTES)
    except IsADirectoryError:
        raise CorruptImageError("is a folder, not an image") from None


def open_image(
    source: Source, max_pixels: int | None = None, setting: str = MAX_PIXELS_SETTING
) -> Image.Image:
    """Open ``source`` (bytes or a path) lazily and check its size from the header, before
    any pixel is decoded; refuses more than ``max_pixels`` (None: Pillow's bomb limit only),
    naming ``setting`` (what sets the limit: FCN_MAX_PIXELS, or a CLI flag).

    A missing or unreadable path raises ``OSError``; everything else is an ``ImageError``.
    """
    head = _head(source)
    if not head:
        raise CorruptImageError("is empty; an image has bytes")
    kind = sniff(head)
    if kind is None:
        names = ", ".join(FORMATS)
        raise UnsupportedImageError(f"is not an image format we read ({names})")
    # Given a path, Pillow opens the file itself and closes it with the picture.
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        picture = Image.open(opened, formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, max_pixels, setting) from exc
    except UnidentifiedImageError as exc:
        raise CorruptImageError(f"starts like a {kind} file but is not a readable one") from exc
    except DECODE_ERRORS as exc:
        raise CorruptImageError(f"has an unreadable {kind} header: {exc}") from exc
    width, height = picture.size
    if max_pixels is not None and width * height > max_pixels:
        picture.close()
        raise too_many_pixels(width * height, max_pixels, setting, f"{width}x{height} = ")
    return picture


def to_rgb(picture: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB, by the rules above."""
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(picture)
        if mode == "F":
            values = np.nan_to_num(values)
            if values.size and values.max() <= 1.0:
                values = values * 255.0
            gray = np.clip(values, 0, 255).astype(np.uint8)
        else:
            gray = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in picture.info):
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
    """An opened picture's pixels as H x W x 3 uint8 RGB, orientation applied; closes it."""
    kind = picture.format
    try:
        picture.load()
        # In place: the copy exif_transpose makes otherwise doubles the peak of every decode.
        ImageOps.exif_transpose(picture, in_place=True)
        return np.asarray(to_rgb(picture), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, GUARD["max_pixels"], GUARD["setting"]) from exc
    except DECODE_ERRORS as exc:
        raise CorruptImageError(f"cannot be decoded as {kind}: {exc}") from exc
    finally:
        picture.close()


def decode_image(
    source: Source, max_pixels: int | None = None, setting: str = MAX_PIXELS_SETTING
) -> NDArray[np.uint8]:
    """Image bytes or an image file -> H x W x 3 uint8 RGB, by the rules above; more than
    ``max_pixels`` is refused naming ``setting``."""
    return decode_picture(open_image(source, max_pixels, setting))
