"""Decoding every image kind to RGB by its documented rule, and refusing what must be refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.decode import (
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    guard_bombs,
)
from tests.images import encode, pattern, png_header_only

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
    decoded = decode_image(encode(RGB, fmt, **options), MAX)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, RGB)


def test_jpeg_decodes_to_libjpegs_pixels() -> None:
    data = encode(RGB, "JPEG", quality=95)
    decoded = decode_image(data, MAX)
    assert decoded.shape == RGB.shape
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data))))


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(decode_image(data, MAX), RGB)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(RGB, "PNG", exif=exif)
    # What a viewer shows: 3 = 180 degrees, 6 = 90 clockwise, 8 = 90 counter-clockwise.
    expected = {3: np.rot90(RGB, 2), 6: np.rot90(RGB, -1), 8: np.rot90(RGB, 1)}[orientation]
    np.testing.assert_array_equal(decode_image(data, MAX), expected)


def test_exif_orientation_in_a_jpeg_turns_its_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(RGB, "JPEG", exif=exif), MAX)
    assert decoded.shape == (40, 30, 3)


def _gray() -> np.ndarray:
    return RGB[..., 0]


def test_grayscale_becomes_three_equal_channels() -> None:
    decoded = decode_image(encode(_gray(), "PNG"), MAX)
    np.testing.assert_array_equal(decoded, np.repeat(_gray()[..., None], 3, axis=2))


def test_sixteen_bit_keeps_the_high_byte() -> None:
    wide = _gray().astype(np.uint16) * 256 + 255  # low byte must not matter
    picture = Image.fromarray(wide)
    assert picture.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        decoded = decode_image(encode(picture, fmt), MAX)
        np.testing.assert_array_equal(decoded, np.repeat(_gray()[..., None], 3, axis=2))


def test_float_tiffs_in_zero_to_one_are_scaled_to_bytes() -> None:
    gray = _gray()
    unit = Image.fromarray(gray.astype(np.float32) / 255)  # as scientific tools write them
    assert unit.mode == "F"
    decoded = decode_image(encode(unit, "TIFF"), MAX)
    assert np.abs(decoded[..., 0].astype(int) - gray).max() <= 1
    # Floats on the 0-255 scale are read as they are.
    byte_scale = Image.fromarray(gray.astype(np.float32))
    decoded = decode_image(encode(byte_scale, "TIFF"), MAX)
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=2))


def test_cmyk_is_converted_as_pillow_does() -> None:
    cmyk = Image.fromarray(RGB).convert("CMYK")
    for fmt in ("TIFF", "JPEG"):
        data = encode(cmyk, fmt)
        stored = Image.open(io.BytesIO(data))
        assert stored.mode == "CMYK"
        expected = np.asarray(stored.convert("RGB"))
        np.testing.assert_array_equal(decode_image(data, MAX), expected)


def _transparent_left_half() -> tuple[np.ndarray, np.ndarray]:
    alpha = np.full(RGB.shape[:2], 255, np.uint8)
    alpha[:, :20] = 0
    expected = RGB.copy()
    expected[:, :20] = 255  # composited over white
    return alpha, expected


def test_rgba_is_composited_over_white() -> None:
    alpha, expected = _transparent_left_half()
    rgba = np.dstack([RGB, alpha])
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG"), MAX), expected)
    opaque = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(opaque, "PNG"), MAX), RGB)


def test_gray_with_alpha_is_composited_over_white() -> None:
    alpha, _ = _transparent_left_half()
    la = Image.fromarray(np.dstack([_gray(), alpha]))
    assert la.mode == "LA"
    expected = _gray().copy()
    expected[:, :20] = 255
    decoded = decode_image(encode(la, "PNG"), MAX)
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
    np.testing.assert_array_equal(decode_image(data, MAX), expected)
    gif = decode_image(encode(picture, "GIF", transparency=15), MAX)
    np.testing.assert_array_equal(gif, expected)


def test_unknown_formats_are_unsupported_not_bad() -> None:
    for data in (b"hello, world", encode(RGB, "PPM"), encode(RGB, "ICO"), b"%PDF-1.7 ..."):
        with pytest.raises(UnsupportedImageError):
            decode_image(data, MAX)


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
    with pytest.raises(CorruptImageError) as caught:
        decode_image(data, MAX)
    assert "BytesIO" not in str(caught.value)


def test_pixel_limit_is_checked_from_the_header_and_names_what_sets_it() -> None:
    limit = 30 * 40 - 1
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(encode(RGB, "PNG"), limit)
    assert str(caught.value) == (
        f"is 40x30 = 1200 pixels; the limit is {limit} pixels, set by FCN_MAX_PIXELS"
    )
    with pytest.raises(ImageTooLargeError, match=f"the limit is {limit} pixels, set by --flag$"):
        decode_image(encode(RGB, "PNG"), limit, "--flag")
    assert decode_image(encode(RGB, "PNG"), 30 * 40).shape == RGB.shape


@pytest.mark.parametrize(
    "side", [40, 100], ids=["pillow-warning-as-error", "pillow-error-at-twice"]
)
def test_pillows_bomb_refusals_speak_of_the_limit_in_force(
    side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's check runs before ours, in its own words ("exceeds limit of 2000 pixels,
    could be decompression bomb DOS attack" where the limit is 1000): ours replace them."""
    import warnings

    from contract import decode

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    monkeypatch.setitem(decode.GUARD, "max_pixels", None)
    with warnings.catch_warnings():
        guard_bombs(1_000, "FCN_MAX_PIXELS")  # raises Pillow's threshold to ours
        assert Image.MAX_IMAGE_PIXELS == 1_000
        with pytest.raises(ImageTooLargeError) as caught:
            decode_image(png_header_only(side, side), 1_000)
    message = str(caught.value)
    assert message == f"is {side * side} pixels; the limit is 1000 pixels, set by FCN_MAX_PIXELS"
    assert "DOS" not in message


@pytest.mark.parametrize("side", [10_000, 15_000], ids=["bomb-warning", "bomb-error"])
def test_decompression_bombs_are_too_large_even_above_our_limit(side: int) -> None:
    # Above Image.MAX_IMAGE_PIXELS Pillow warns, above twice that it raises: both are 413.
    assert side * side > Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="over Pillow's decompression-bomb limit of"):
        decode_image(png_header_only(side, side), 10**9)


def test_bomb_warnings_are_errors_once_guarded() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        guard_bombs()
        with pytest.raises(ImageTooLargeError):
            decode_image(png_header_only(10_000, 10_000), 10**9)
