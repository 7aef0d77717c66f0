"""Label maps to bytes: palette PNGs of class ids, overlays and COCO RLE."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.encode import encode_labels, encode_overlay, rle
from contract.palette import color_table
from tests.images import pattern
from tests.service.support import PALETTE, rle_decode


def test_label_png_is_a_palette_png_of_class_ids() -> None:
    labels = np.array([[0, 1, 2], [3, 4, 0]], dtype=np.uint8)
    table = color_table(PALETTE)
    picture = Image.open(io.BytesIO(encode_labels(labels, table, 1)))
    assert (picture.format, picture.mode) == ("PNG", "P")
    np.testing.assert_array_equal(np.asarray(picture), labels)
    assert picture.getpalette()[: 3 * 5] == [v for color in PALETTE for v in color]


def test_labels_above_255_classes_are_16_bit_png() -> None:
    labels = np.array([[0, 300], [65535, 7]], dtype=np.int32)
    picture = Image.open(io.BytesIO(encode_labels(labels, color_table([]), 1)))
    assert picture.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(picture), labels)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_overlay_blends_class_colours(alpha: float) -> None:
    image = np.full((4, 4, 3), 200, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[:, 2:] = 1
    table = color_table(PALETTE)
    data = encode_overlay(
        image, labels, table, alpha=alpha, image_format="png", jpeg_quality=90, compress_level=1
    )
    out = np.asarray(Image.open(io.BytesIO(data)))
    expected = (1 - alpha) * image + alpha * table[labels]
    assert np.abs(out.astype(float) - expected).max() <= 1


def test_rle_is_coco_column_major_and_decodes_back() -> None:
    labels = np.array([[0, 0, 1], [2, 1, 1]], dtype=np.uint8)
    runs = rle(labels)
    # Column-major order: 0 2 | 0 1 | 1 1.
    assert runs == {0: [0, 1, 1, 1, 3], 1: [3, 3], 2: [1, 1, 4]}
    labels = np.asarray(pattern(37, 23)[..., 0] // 60)
    for class_id, counts in rle(labels).items():
        mask = rle_decode({"size": list(labels.shape), "counts": counts})
        np.testing.assert_array_equal(mask, labels == class_id)
