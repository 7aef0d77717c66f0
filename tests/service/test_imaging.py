"""The service's own image work: sizes at the model (conv1's padding), shrinking and
enlarging, and the JSON answer."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contract.decode import ImageTooLargeError, open_image
from contract.palette import color_table
from contract.tiling import padded_pixels
from service import imaging
from service.imaging import LabelEncoding
from tests.images import pattern, png_header_only


def test_the_model_size_limit_counts_conv1s_padding() -> None:
    # 1 x 50,000 pixels, a 230-byte PNG: the model runs on 201 x 50,200 of them.
    thin = open_image(png_header_only(50_000, 1), max_pixels=10**9)
    width, height = thin.size
    assert padded_pixels(height, width) == 201 * 50_200
    with pytest.raises(ImageTooLargeError, match="padded by 100 on every side to 50200x201"):
        imaging.check_model_size(height, width, max_model_pixels=8_000_000)
    imaging.check_model_size(height, width, max_model_pixels=201 * 50_200)


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


def test_the_json_answer_counts_classes_and_carries_the_label_map() -> None:
    labels = np.array([[0, 0, 2], [2, 2, 7]], dtype=np.uint8)  # 7: past the names
    table = color_table([[0, 0, 0], [10, 10, 10], [20, 20, 20]])
    model = {"name": "m", "arch": "fcn8s", "version": "fcn8s-0"}

    def answer(label_encoding: LabelEncoding) -> dict[str, Any]:
        data = imaging.encode_json(
            labels,
            classes=["sky", "tree", "road"],
            table=table,
            model=model,
            label_encoding=label_encoding,
            compress_level=1,
        )
        return dict(json.loads(data))

    runs = answer("rle")
    assert (runs["width"], runs["height"], runs["model"]) == (3, 2, model)
    assert [(c["id"], c["name"], c["pixels"]) for c in runs["classes"]] == [
        (0, "sky", 2),
        (2, "road", 3),
        (7, "7", 1),
    ]
    assert runs["classes"][0]["rle"] == {"size": [2, 3], "counts": [0, 1, 1, 1, 3]}
    png = answer("png")
    assert "rle" not in png["classes"][0]
    decoded = Image.open(io.BytesIO(base64.b64decode(png["label_map"])))
    np.testing.assert_array_equal(np.asarray(decoded), labels)
