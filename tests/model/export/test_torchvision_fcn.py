"""torchvision's FCN-ResNet50 exported to the contract: a file the service accepts, whose labels
are torchvision's own, from random weights or from a published-style ``.pth`` file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.segmentation import fcn_resnet50

from contract.palette import VOC_CLASSES, voc_colormap
from contract.schema import check_model, session_tensors
from contract.tiling import Tiling
from model.export.torchvision_fcn import export_torchvision_fcn
from model.nets.backbones import WeightsError

# torchvision's published ImageNet normalisation of RGB in [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Odd sizes, and a batch of two, none of them the traced example (2 x 67 x 91).
SHAPES = [(1, 97, 131), (2, 64, 80)]
SEED = 0
# What a caller knows of the weights, carried into the file's metadata.
FIGURES = {"mean_iu": 0.605, "pixel_accuracy": 0.914}
ORIGIN = {"name": "torchvision-fcn-resnet50", "url": "http://127.0.0.1/fcn_resnet50_coco.pth"}


def random_fcn_resnet50() -> nn.Module:
    """torchvision's FCN-ResNet50 as the export builds it under ``SEED`` (no weights)."""
    torch.manual_seed(SEED)
    model = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
    return model.eval()


def torchvision_logits(model: nn.Module, image: np.ndarray) -> Tensor:
    """torchvision's own logits for a uint8 [N, H, W, 3] batch: its normalisation, its forward."""
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits: Tensor = model(x)["out"]
    return logits


def torchvision_labels(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """torchvision's own labels for a uint8 [N, H, W, 3] batch."""
    return torchvision_logits(model, image).argmax(1).numpy()


def torchvision_confidence(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """round(255 x torchvision's top softmax probability), in float64."""
    top = torchvision_logits(model, image).double().softmax(1).amax(1)
    return (255 * top).round().numpy()


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for shape in SHAPES]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def published_like(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s weights as torchvision publishes them: with the auxiliary head's keys."""
    return {**model.state_dict(), "aux_classifier.0.weight": torch.zeros(256, 1024, 3, 3)}


@pytest.fixture(scope="module")
def random_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fcn_resnet50 with random weights (seeded), exported and verified once for the module."""
    torch.manual_seed(SEED)
    out = tmp_path_factory.mktemp("torchvision") / "fcn-resnet50.onnx"
    return export_torchvision_fcn("fcn_resnet50", out)


@pytest.fixture(scope="module")
def loaded() -> nn.Module:
    """Other random weights: a re-drawn last classifier layer changes most labels."""
    model = random_fcn_resnet50()
    torch.manual_seed(SEED + 1)
    nn.init.normal_(model.classifier[4].weight)
    return model


@pytest.fixture(scope="module")
def loaded_export(loaded: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``loaded`` saved as a published ``.pth`` and exported through ``weights_path``."""
    folder = tmp_path_factory.mktemp("torchvision")
    weights = folder / "fcn_resnet50_coco.pth"
    torch.save(published_like(loaded), weights)
    out = folder / "fcn-resnet50-loaded.onnx"
    return export_torchvision_fcn(
        "fcn_resnet50", out, weights_path=weights, verify=False, metrics=FIGURES, origin=ORIGIN
    )


@pytest.mark.slow
def test_the_export_keeps_the_contract_as_onnx_runtime_reads_it(random_export: Path) -> None:
    sess = session(random_export)
    meta = check_model(
        sess.get_modelmeta().custom_metadata_map,
        session_tensors(sess.get_inputs()),
        session_tensors(sess.get_outputs()),
        str(random_export),
    )
    assert (meta.arch, meta.backbone, meta.width) == ("fcn-resnet50", "resnet50", 1.0)
    assert meta.classes == VOC_CLASSES
    assert list(meta.palette) == voc_colormap(21)
    assert meta.ignore_index == 255
    assert meta.dataset == "coco-voc-subset (torchvision)"
    assert meta.metrics == {}  # random weights have no figures
    assert meta.origin == {}
    assert meta.preprocessing["channel_order"] == "RGB"
    assert (meta.preprocessing["mean"], meta.preprocessing["std"]) == (list(MEAN), list(STD))
    assert meta.preprocessing["scale"] == pytest.approx(1 / 255)
    assert meta.tiling == Tiling(align=8, context=232)
    assert meta.outputs == ("labels", "confidence")


@pytest.mark.slow
@pytest.mark.slow
def test_labels_equal_torchvisions_own_forward_pass(random_export: Path) -> None:
    model = random_fcn_resnet50()
    sess = session(random_export)
    for image in images():
        labels, confidence = sess.run(None, {"image": image})
        expected = torchvision_labels(model, image)
        assert np.abs(confidence.astype(np.int16) - torchvision_confidence(model, image)).max() <= 1
        assert labels.dtype == np.uint8
        assert labels.shape == image.shape[:3]
        assert len(np.unique(expected)) > 3  # the comparison is not of one constant class
        assert np.array_equal(labels, expected)


@pytest.mark.slow
def test_published_weights_load_through_weights_path_without_their_aux_head(
    loaded: nn.Module, loaded_export: Path, random_export: Path
) -> None:
    loaded_sess, random_sess = session(loaded_export), session(random_export)
    meta = loaded_sess.get_modelmeta().custom_metadata_map
    for image in images():
        (labels,) = loaded_sess.run(["labels"], {"image": image})
        (random_labels,) = random_sess.run(["labels"], {"image": image})
        assert np.array_equal(labels, torchvision_labels(loaded, image))
        assert (labels != random_labels).mean() > 0.5  # the file's weights, not the seed's
    assert json.loads(meta["fcn.metrics"]) == FIGURES
    assert json.loads(meta["fcn.origin"]) == ORIGIN


def misfits() -> Mapping[str, tuple[dict[str, Tensor], str]]:
    """Weights that do not fit, and what the refusal says of them."""
    state = published_like(random_fcn_resnet50())
    missing = {k: v for k, v in state.items() if k != "classifier.4.bias"}
    unexpected = {**state, "backbone.fc.weight": torch.zeros(1000, 2048)}
    reshaped = {**state, "classifier.4.weight": torch.zeros(20, 512, 1, 1)}
    return {
        "missing": (missing, "missing classifier.4.bias"),
        "unexpected": (unexpected, "unexpected backbone.fc.weight"),
        "reshaped": (reshaped, r"classifier.4.weight is \[20, 512, 1, 1\], not \[21, 512, 1, 1\]"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "unexpected", "reshaped"])
def test_weights_that_do_not_fit_are_refused_naming_the_file(problem: str, tmp_path: Path) -> None:
    state, refusal = misfits()[problem]
    weights = tmp_path / "weights.pth"
    torch.save(state, weights)
    out = tmp_path / "model.onnx"
    fit = r"weights\.pth: weights do not fit torchvision's fcn_resnet50: "
    with pytest.raises(WeightsError, match=fit + refusal):
        export_torchvision_fcn("fcn_resnet50", out, weights_path=weights)
    assert list(tmp_path.iterdir()) == [weights]  # no model file, no temporary file


def test_a_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nothing\.pth: no such torchvision FCN weights"):
        export_torchvision_fcn("fcn_resnet50", tmp_path / "m.onnx", weights_path="nothing.pth")
