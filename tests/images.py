"""Test images shared by every part's tests: a smooth pattern, Pillow encoding, and the
corpus of odd files users send (16-bit, alpha, palette, CMYK, EXIF-rotated, tiny, thin)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth H x W x 3 uint8 test image with at most 216 colours (so GIF is lossless)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(2, 6, size=3)
    channels = [
        np.sin(freq[c] * xx / max(width, 1) * np.pi + phase[c])
        * np.cos(freq[c] * yy / max(height, 1) * np.pi)
        for c in range(3)
    ]
    levels = np.round((np.stack(channels, -1) + 1) / 2 * 5)  # 6 levels per channel
    return (levels * 51).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str, **options: Any) -> bytes:
    """Encode an array or a Pillow image with Pillow."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def odd_images() -> dict[str, bytes]:
    """Files that reach the network only through a decoding rule, by name (each also a
    plausible file name stem): every kind ``contract.decode`` documents."""
    rgb = pattern(48, 64, seed=3)
    gray = rgb[..., 0]
    wide = gray.astype(np.uint16) * 256 + 128  # 16-bit: the low byte must not matter
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:, :20] = 0  # a transparent band hiding colours
    rotated = Image.Exif()
    rotated[0x0112] = 6  # 90 degrees clockwise
    return {
        "sixteen_bit": encode(Image.fromarray(wide), "PNG"),
        "rgba": encode(np.dstack([rgb, alpha]), "PNG"),
        "palette": encode(Image.fromarray(rgb).quantize(colors=12), "PNG"),
        "cmyk": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "exif_rotated": encode(rgb, "JPEG", quality=95, exif=rotated),
        "grayscale": encode(gray, "PNG"),
        "one_pixel": encode(rgb[:1, :1], "PNG"),
        "thin": encode(pattern(7, 1001, seed=4), "PNG"),
        "photo": encode(pattern(61, 83, seed=5), "JPEG", quality=90),
    }


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels: a header is all Pillow reads first."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"")
    chunks = ihdr + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + chunks
