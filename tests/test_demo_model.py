"""The bundled demo model still scores what its card and metadata record.

The validation set is regenerated from its seed (the generator is deterministic), run
through the committed ONNX file with ONNX Runtime, and scored with the paper's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.evaluation.metrics import ConfusionMatrix
from model.export.metadata import read_metadata

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
MODEL = DEMO / "fcn8s.onnx"


@pytest.fixture(scope="module")
def recipe() -> dict[str, object]:
    data: dict[str, object] = json.loads((DEMO / "recipe.json").read_text())
    return data


def test_demo_model_is_small_and_self_describing(recipe: dict[str, object]) -> None:
    assert MODEL.stat().st_size <= 20 * 2**20
    meta = read_metadata(MODEL)
    assert meta.arch == "fcn8s"
    assert meta.classes == SYNTH_CLASSES
    assert meta.dataset.startswith("voc:")
    assert meta.metrics["mean_iu"] == pytest.approx(recipe["mean_iu"]["fcn8s"], abs=1e-6)  # type: ignore[index]


@pytest.mark.slow
def test_demo_model_still_scores_its_recorded_mean_iu(
    recipe: dict[str, object], tmp_path: Path
) -> None:
    data = recipe["data"]
    assert isinstance(data, dict)
    height, width = (int(v) for v in str(data["size"]).split("x"))
    root = write_synthetic(
        tmp_path / "synth",
        train=1,
        val=int(data["val"]),
        size=(height, width),
        seed=int(data["seed"]),
    )
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    confusion = ConfusionMatrix(len(SYNTH_CLASSES))
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(ids) == int(data["val"])
    for image_id in ids:
        image = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        target = np.asarray(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        (labels,) = session.run(["labels"], {"image": image[None]})
        confusion.update(torch.from_numpy(target.astype(np.int64)), torch.from_numpy(labels[0]))
    measured = confusion.compute().mean_iu * 100
    recorded = read_metadata(MODEL).metrics["mean_iu"] * 100
    assert measured == pytest.approx(recorded, abs=0.5)


def test_demo_model_says_how_sure_it_is() -> None:
    if not read_metadata(MODEL).has_confidence:
        pytest.skip(
            "the committed demo predates the confidence output; models/demo/build.sh "
            "(fcn export writes it by default) regenerates it"
        )
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels", "confidence"]
    image = np.asarray(Image.open(DEMO / "samples" / "val_000000.jpg").convert("RGB"))
    labels, confidence = session.run(["labels", "confidence"], {"image": image[None]})
    assert confidence.dtype == np.uint8
    assert confidence.shape == labels.shape == (1, *image.shape[:2])
    # A trained model: sure of most pixels (the shapes' insides), unsure along their edges.
    assert np.median(confidence) > 200
    assert confidence.min() < 200
