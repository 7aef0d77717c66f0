"""``fcn predict --confidence``: grey PNGs of the top class's probability beside the label
maps, and a file exported without the output refused, saying how to export it again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.decode import decode_image
from model.checkpoint import load_checkpoint
from model.cli import main
from model.nets.preprocessing import Normalize
from tests.factory import exported


def expected_confidence(checkpoint: Path, path: Path) -> np.ndarray:
    """round(255 x the top softmax probability) of the checkpoint's logits, in float64."""
    ckpt = load_checkpoint(checkpoint)
    image = torch.from_numpy(np.array(decode_image(path))).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = ckpt.build_model().eval()(Normalize(ckpt.preprocessing)(image))
    return (255 * logits.double().softmax(1).amax(1)[0]).round().numpy()


@pytest.mark.slow
def test_confidence_maps_are_grey_pngs_of_the_top_probability(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(photos), "--out", str(out)]
    assert main([*args, "--confidence", "--no-overlay"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "a_confidence.png", "b.png", "b_confidence.png", "c.png", "c_confidence.png",
    ]  # fmt: skip
    for source in (photos / "a.jpg", photos / "b.png", photos / "c.webp"):
        with Image.open(out / f"{source.stem}_confidence.png") as picture:
            assert picture.mode == "L"
            confidence = np.asarray(picture, dtype=np.int16)
        with Image.open(out / f"{source.stem}.png") as label:
            assert confidence.shape == np.asarray(label).shape
        assert np.abs(confidence - expected_confidence(checkpoint, source)).max() <= 1


@pytest.mark.slow
def test_a_file_without_confidence_is_refused_saying_how_to_export_it(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = exported("fcn8s", confidence=False)
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(path), str(photos), "--out", str(out)]
    assert main([*args, "--confidence"]) == 2
    err = capsys.readouterr().err
    assert f"{path} has no 'confidence' output" in err
    assert "fcn export --checkpoint CKPT --out MODEL.onnx" in err
    assert not out.exists()
    assert main(args) == 0  # its labels are still there
