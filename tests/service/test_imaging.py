"""Decoding every image kind to RGB, refusing what must be refused, and encoding results."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service import imaging
from service.errors import BadImageError, ImageTooLargeError, UnsupportedMediaTypeError
from tests.service.support import PALETTE, encode, pattern, rle_decode

MAX = 10_000_000
RGB = pattern(30, 40)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
    ],
    ids=["png", "bmp", "tiff", "tiff-lzw", "webp-lossless", "gif"],
)
def test_lossless_formats_decode_to_the_exact_pixels(fmt: str, options: dict[str, object]) -> None:
    decoded = imaging.decode(encode(RGB, fmt, **options), MAX)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, RGB)


def test_jpeg_decodes_to_libjpegs_pixels() -> None:
    data = encode(RGB, "JPEG", quality=95)
    decoded = imaging.decode(data, MAX)
    assert decoded.shape == RGB.shape
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data))))


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(imaging.decode(data, MAX), RGB)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(RGB, "PNG", exif=exif)
    # What a viewer shows: 3 = 180 degrees, 6 = 90 clockwise, 8 = 90 counter-clockwise.
    expected = {3: np.rot90(RGB, 2), 6: np.rot90(RGB, -1), 8: np.rot90(RGB, 1)}[orientation]
    np.testing.assert_array_equal(imaging.decode(data, MAX), expected)


def test_exif_orientation_in_a_jpeg_turns_its_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = imaging.decode(encode(RGB, "JPEG", exif=exif), MAX)
    assert decoded.shape == (40, 30, 3)


def _gray() -> np.ndarray:
    return RGB[..., 0]


def test_grayscale_becomes_three_equal_channels() -> None:
    decoded = imaging.decode(encode(_gray(), "PNG"), MAX)
    np.testing.assert_array_equal(decoded, np.repeat(_gray()[..., None], 3, axis=2))


def test_sixteen_bit_keeps_the_high_byte() -> None:
    wide = _gray().astype(np.uint16) * 256 + 255  # low byte must not matter
    picture = Image.fromarray(wide)
    assert picture.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        decoded = imaging.decode(encode(picture, fmt), MAX)
        np.testing.assert_array_equal(decoded, np.repeat(_gray()[..., None], 3, axis=2))


def test_float_tiffs_in_zero_to_one_are_scaled_to_bytes() -> None:
    gray = _gray()
    unit = Image.fromarray(gray.astype(np.float32) / 255)  # as scientific tools write them
    assert unit.mode == "F"
    decoded = imaging.decode(encode(unit, "TIFF"), MAX)
    assert np.abs(decoded[..., 0].astype(int) - gray).max() <= 1
    # Floats on the 0-255 scale are read as they are.
    byte_scale = Image.fromarray(gray.astype(np.float32))
    decoded = imaging.decode(encode(byte_scale, "TIFF"), MAX)
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=2))


def test_cmyk_is_converted_as_pillow_does() -> None:
    cmyk = Image.fromarray(RGB).convert("CMYK")
    for fmt in ("TIFF", "JPEG"):
        data = encode(cmyk, fmt)
        stored = Image.open(io.BytesIO(data))
        assert stored.mode == "CMYK"
        expected = np.asarray(stored.convert("RGB"))
        np.testing.assert_array_equal(imaging.decode(data, MAX), expected)


def _transparent_left_half() -> tuple[np.ndarray, np.ndarray]:
    alpha = np.full(RGB.shape[:2], 255, np.uint8)
    alpha[:, :20] = 0
    expected = RGB.copy()
    expected[:, :20] = 255  # composited over white
    return alpha, expected


def test_rgba_is_composited_over_white() -> None:
    alpha, expected = _transparent_left_half()
    rgba = np.dstack([RGB, alpha])
    np.testing.assert_array_equal(imaging.decode(encode(rgba, "PNG"), MAX), expected)
    opaque = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(imaging.decode(encode(opaque, "PNG"), MAX), RGB)


def test_gray_with_alpha_is_composited_over_white() -> None:
    alpha, _ = _transparent_left_half()
    la = Image.fromarray(np.dstack([_gray(), alpha]))
    assert la.mode == "LA"
    expected = _gray().copy()
    expected[:, :20] = 255
    decoded = imaging.decode(encode(la, "PNG"), MAX)
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=2))


def test_palette_with_a_transparent_index() -> None:
    palette_image = Image.fromarray(RGB).quantize(colors=15)  # index 15 stays free
    indices = np.asarray(palette_image).copy()
    indices[:, :20] = 15
    picture = Image.fromarray(indices)
    picture.putpalette([*palette_image.getpalette()[: 15 * 3], 0, 0, 0])
    assert picture.mode == "P"
    data = encode(picture, "PNG", transparency=15)
    expected = np.asarray(picture.convert("RGB")).copy()
    expected[:, :20] = 255
    np.testing.assert_array_equal(imaging.decode(data, MAX), expected)
    gif = imaging.decode(encode(picture, "GIF", transparency=15), MAX)
    np.testing.assert_array_equal(gif, expected)


def test_unknown_formats_are_unsupported_not_bad() -> None:
    for data in (b"hello, world", encode(RGB, "PPM"), encode(RGB, "ICO"), b"%PDF-1.7 ..."):
        with pytest.raises(UnsupportedMediaTypeError):
            imaging.decode(data, MAX)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff\xe0 not really a jpeg",
        encode(RGB, "PNG")[:200],
        encode(RGB, "JPEG")[:300],
        encode(RGB, "GIF")[:40],
        b"GIF89a" + b"\x00" * 3,
    ],
    ids=["empty", "jpeg-magic-only", "truncated-png", "truncated-jpeg", "truncated-gif", "gif"],
)
def test_corrupt_or_truncated_images_are_bad(data: bytes) -> None:
    with pytest.raises(BadImageError) as caught:
        imaging.decode(data, MAX)
    assert "BytesIO" not in str(caught.value)


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="30x40|40x30"):
        imaging.decode(encode(RGB, "PNG"), 30 * 40 - 1)
    assert imaging.decode(encode(RGB, "PNG"), 30 * 40).shape == RGB.shape


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels: a header is all Pillow reads first."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"")
    chunks = ihdr + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_the_model_size_limit_counts_conv1s_padding() -> None:
    # 1 x 50,000 pixels, a 230-byte PNG: the model runs on 201 x 50,200 of them.
    thin = imaging.open_image(png_header_only(50_000, 1), max_pixels=10**9)
    width, height = thin.size
    assert imaging.padded_pixels(height, width) == 201 * 50_200
    with pytest.raises(ImageTooLargeError, match="padded by 100 on every side to 50200x201"):
        imaging.check_model_size(height, width, max_model_pixels=8_000_000, max_side=0)
    imaging.check_model_size(height, width, max_model_pixels=201 * 50_200, max_side=0)
    # Reduced for the model first, it fits: ?max_side= is the way for large images.
    imaging.check_model_size(height, width, max_model_pixels=300_000, max_side=1000)


@pytest.mark.parametrize("side", [10_000, 15_000], ids=["bomb-warning", "bomb-error"])
def test_decompression_bombs_are_too_large_even_above_our_limit(side: int) -> None:
    # Above Image.MAX_IMAGE_PIXELS Pillow warns, above twice that it raises: both are 413.
    assert side * side > Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        imaging.decode(png_header_only(side, side), 10**9)


def test_bomb_warnings_are_errors_once_guarded() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        imaging.guard_bombs()
        with pytest.raises(ImageTooLargeError):
            imaging.decode(png_header_only(10_000, 10_000), 10**9)


def test_shrink_and_enlarge_round_trip_sizes() -> None:
    image = pattern(300, 500)
    small = imaging.shrink(image, 100)
    assert small.shape == (60, 100, 3)
    assert imaging.shrink(image, 500) is image
    labels = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    big = imaging.enlarge(labels, 30, 50)
    assert big.shape == (30, 50)
    # Nearest neighbour: every 5x5 block is one source label.
    np.testing.assert_array_equal(big[::5, ::5], labels)
    np.testing.assert_array_equal(big, np.repeat(np.repeat(labels, 5, 0), 5, 1))


def test_label_png_is_a_palette_png_of_class_ids() -> None:
    labels = np.array([[0, 1, 2], [3, 4, 0]], dtype=np.uint8)
    table = imaging.color_table(PALETTE, 5)
    picture = Image.open(io.BytesIO(imaging.encode_labels(labels, table, 1)))
    assert (picture.format, picture.mode) == ("PNG", "P")
    np.testing.assert_array_equal(np.asarray(picture), labels)
    assert picture.getpalette()[: 3 * 5] == [v for color in PALETTE for v in color]


def test_labels_above_255_classes_are_16_bit_png() -> None:
    labels = np.array([[0, 300], [65535, 7]], dtype=np.int32)
    picture = Image.open(io.BytesIO(imaging.encode_labels(labels, imaging.color_table([], 1), 1)))
    assert picture.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(picture), labels)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_overlay_blends_class_colours(alpha: float) -> None:
    image = np.full((4, 4, 3), 200, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[:, 2:] = 1
    table = imaging.color_table(PALETTE, 5)
    data = imaging.encode_overlay(
        image, labels, table, alpha=alpha, image_format="png", jpeg_quality=90, compress_level=1
    )
    out = np.asarray(Image.open(io.BytesIO(data)))
    expected = (1 - alpha) * image + alpha * table[labels]
    assert np.abs(out.astype(float) - expected).max() <= 1


def test_rle_is_coco_column_major_and_decodes_back() -> None:
    labels = np.array([[0, 0, 1], [2, 1, 1]], dtype=np.uint8)
    runs = imaging.rle(labels)
    # Column-major order: 0 2 | 0 1 | 1 1.
    assert runs == {0: [0, 1, 1, 1, 3], 1: [3, 3], 2: [1, 1, 4]}
    labels = np.asarray(pattern(37, 23)[..., 0] // 60)
    for class_id, counts in imaging.rle(labels).items():
        mask = rle_decode({"size": list(labels.shape), "counts": counts})
        np.testing.assert_array_equal(mask, labels == class_id)
