"""Label maps to bytes: palette PNGs of class ids, overlays and COCO RLE."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract import encode
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


def test_a_legend_names_the_classes_present_most_first_under_the_overlay() -> None:
    classes = ["background", "cat", "dog", "person", "sofa"]
    table = color_table(PALETTE[: len(classes)])
    labels = np.zeros((120, 400), np.uint8)
    labels[:, 300:] = 3  # person: 25%
    labels[:30, :100] = 1  # cat: 6.25%
    image = pattern(120, 400)
    present = encode.present(labels, classes)
    assert [(i, name) for i, name, _ in present] == [(0, "background"), (3, "person"), (1, "cat")]
    assert [round(f, 4) for _, _, f in present] == [0.6875, 0.25, 0.0625]
    plain = Image.open(io.BytesIO(encode_overlay(image, labels, table, image_format="png")))
    both = Image.open(
        io.BytesIO(encode_overlay(image, labels, table, image_format="png", legend_classes=classes))
    )
    assert both.width == plain.width
    assert both.height > plain.height
    # The overlay is untouched above; below, a swatch of each class present and no other.
    assert np.array_equal(np.asarray(both)[: plain.height], np.asarray(plain))
    strip = {tuple(c) for c in np.asarray(both)[plain.height :].reshape(-1, 3).tolist()}
    for class_id, colour in enumerate(table[: len(classes)].tolist()):
        assert (tuple(colour) in strip) == (class_id in (0, 1, 3)), classes[class_id]


def test_a_legend_keeps_its_share_of_the_overlay_at_any_size() -> None:
    """Under a 4000x3000 overlay the legend is as large a part of the picture as under a
    500x375 one, so it stays legible once a screen scales the picture down."""
    classes = ["background", "aeroplane", "person"]
    table = color_table(PALETTE[: len(classes)])
    shares = []
    for height, width in ((375, 500), (3000, 4000)):
        labels = np.zeros((height, width), np.uint8)
        labels[: height // 2, : width // 3] = 1
        labels[height // 2 :, width // 2 :] = 2
        strip = encode.legend(labels, table, classes, width)
        assert strip.width == width
        shares.append(strip.height / height)
    small, large = shares
    assert small > 0.04  # a real strip, not a sliver
    assert abs(large - small) / small < 0.1, shares
    # The floor: a tiny overlay's text stays 12 pixels tall.
    tiny = encode.legend(np.zeros((20, 30), np.uint8), table, classes, 30)
    assert tiny.height >= encode.LEGEND_TEXT_MIN_PX


def test_a_legend_wraps_onto_more_rows_when_the_image_is_narrow() -> None:
    classes = [f"class number {i}" for i in range(12)]
    table = color_table([[20 * i, 255 - 20 * i, 7 * i] for i in range(12)])
    labels = np.repeat(np.arange(12, dtype=np.uint8), 10)[None].repeat(40, 0)  # 40 x 120
    one_row = encode.legend(np.zeros_like(labels), table, classes, 120)
    narrow = encode.legend(labels, table, classes, 120)
    assert narrow.width == one_row.width == 120
    assert narrow.height > 4 * one_row.height  # one entry, or so, a row


def test_the_confidence_png_is_8_bit_grey_of_the_values() -> None:
    confidence = np.array([[0, 51, 128], [200, 254, 255]], dtype=np.uint8)
    picture = Image.open(io.BytesIO(encode.encode_confidence(confidence)))
    assert (picture.format, picture.mode, picture.size) == ("PNG", "L", (3, 2))
    np.testing.assert_array_equal(np.asarray(picture), confidence)


@pytest.mark.parametrize(
    ("min_confidence", "limit"),
    [(0.0, 0), (0.2, 51), (0.5, 128), (0.9, 230), (1.0, 255)],
)
def test_a_pixel_is_below_min_confidence_when_its_value_is_below_255_times_it(
    min_confidence: float, limit: int
) -> None:
    assert encode.confidence_limit(min_confidence) == limit
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(encode.below(values, min_confidence), values < limit)


def test_unsure_pixels_are_painted_one_colour_and_named_in_the_legend() -> None:
    classes = ["background", "cat", "dog"]
    table = color_table(PALETTE[:3])
    labels = np.zeros((300, 200), np.uint8)  # taller than one blending strip
    labels[:, 100:] = 1
    confidence = np.full((300, 200), 250, np.uint8)
    confidence[280:, :50] = 100  # 1000 unsure background pixels, in the second strip
    unsure = encode.below(confidence, 0.5)
    image = np.full((300, 200, 3), 90, np.uint8)
    plain = encode_overlay(image, labels, table, alpha=1.0, image_format="png")
    marked = encode_overlay(image, labels, table, alpha=1.0, image_format="png", unsure=unsure)
    painted = np.asarray(Image.open(io.BytesIO(marked)))
    assert (painted[unsure] == encode.UNSURE_COLOR).all()
    np.testing.assert_array_equal(
        painted[~unsure], np.asarray(Image.open(io.BytesIO(plain)))[~unsure]
    )
    present = encode.present(labels, classes, unsure)
    # Shares of all pixels, most first: the unsure ones count for no class.
    assert [(name, round(f, 4)) for _, name, f in present] == [
        ("cat", 0.5),
        ("background", round(29000 / 60000, 4)),
    ]
    with_legend = encode_overlay(
        image, labels, table, image_format="png", legend_classes=classes, unsure=unsure
    )
    strip = np.asarray(Image.open(io.BytesIO(with_legend)))[300:]
    assert encode.UNSURE_COLOR in {tuple(c) for c in strip.reshape(-1, 3).tolist()}
    without = encode.legend(labels, table, classes, 200)
    assert encode.UNSURE_COLOR not in {
        tuple(c) for c in np.asarray(without).reshape(-1, 3).tolist()
    }
