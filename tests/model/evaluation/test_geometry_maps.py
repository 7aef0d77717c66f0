"""``fcn predict`` of a two-head model: STEM_geometry.png beside the labels, the tiled map at
the exact overlap equal to the whole image's, and nothing of the kind for one-head models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from contract.schema import parse_metadata
from model.evaluation.predict import predict
from tests.factory import exported, exported_two_head
from tests.images import encode, pattern


@pytest.mark.slow
def test_tiled_geometry_at_the_exact_overlap_is_the_whole_images(tmp_path: Path) -> None:
    _, path = exported_two_head()
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes(encode(pattern(613, 777, seed=4), "PNG"))
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    exact = parse_metadata(props).tiling.exact_overlap
    choice = {"runtime": "onnxruntime", "precision": "fp32"}
    predict(path, [photo.parent], tmp_path / "whole", overlays=False, **choice)
    predict(
        path,
        [photo.parent],
        tmp_path / "tiled",
        overlays=False,
        tile_size=exact + 80,
        tile_overlap=exact,
        **choice,
    )
    whole = np.asarray(Image.open(tmp_path / "whole" / "photo_geometry.png"))
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "photo_geometry.png"))
    assert whole.shape == (613, 777)
    assert len(np.unique(whole)) > 1
    assert np.array_equal(tiled, whole)
    labels = (tmp_path / "tiled" / "photo.png").read_bytes()
    assert labels == (tmp_path / "whole" / "photo.png").read_bytes()


@pytest.mark.slow
def test_a_one_head_model_writes_no_geometry(tmp_path: Path) -> None:
    _, path = exported()
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(pattern(20, 30), "PNG"))
    predict(path, [photo], tmp_path / "out", overlays=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo.png"]
