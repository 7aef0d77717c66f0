"""Decoding every image kind to RGB, refusing what must be refused, and encoding results."""

from __future__ import annotations

import numpy as np
import pytest

from service import imaging
from service.errors import ImageTooLargeError
from tests.service.support import pattern

MAX = 10_000_000
RGB = pattern(30, 40)


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
