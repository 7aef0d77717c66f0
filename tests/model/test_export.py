"""The exported graph follows the schema-1 contract and matches PyTorch through ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.checkpoint import Checkpoint
from model.export import SegmentationGraph, export_onnx
from model.fcn import ModelSpec, build_fcn
from model.palette import voc_colormap
from model.preprocessing import CAFFE


def checkpoint(arch: str = "fcn8s", num_classes: int = 5) -> Checkpoint:
    spec = ModelSpec(arch, num_classes, 1 / 32)
    torch.manual_seed(0)
    net = build_fcn(spec)
    for name in ("score_fr", *net.skip_layers):
        torch.nn.init.normal_(getattr(net, name).weight)
    names = [f"class{i}" for i in range(num_classes)]
    colors = voc_colormap(num_classes)
    return Checkpoint(spec, net.state_dict(), names, colors, CAFFE, dataset="synthetic")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    ckpt = checkpoint()
    path = export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return ckpt, path


def test_graph_has_the_contract_inputs_outputs_and_metadata(
    exported: tuple[Checkpoint, Path],
) -> None:
    _, path = exported
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == ("image", "tensor(uint8)", ["N", "H", "W", 3])
    (labels,) = session.get_outputs()
    assert (labels.name, labels.type, labels.shape) == ("labels", "tensor(uint8)", ["N", "H", "W"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["fcn.schema"] == "1"
    assert meta["fcn.arch"] == "fcn8s"
    assert json.loads(meta["fcn.classes"]) == [f"class{i}" for i in range(5)]
    assert json.loads(meta["fcn.palette"])[1] == [128, 0, 0]
    assert meta["fcn.ignore_index"] == "255"


def test_onnx_runtime_matches_pytorch_on_sizes_other_than_the_export_size(
    exported: tuple[Checkpoint, Path],
) -> None:
    ckpt, path = exported
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    reference = SegmentationGraph(ckpt.build_model(), ckpt.preprocessing).eval()
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 1, 3), (3, 45, 31, 3), (1, 120, 97, 3)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        (labels,) = session.run(None, {"image": image})
        with torch.no_grad():
            (expected,) = reference(torch.from_numpy(image))
        assert labels.shape == shape[:3]
        assert (labels == expected.numpy()).mean() >= 0.9999


def test_256_classes_or_more_export_int32_labels(tmp_path: Path) -> None:
    path = export_onnx(checkpoint("fcn8s", num_classes=256), tmp_path / "wide.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].type == "tensor(int32)"
    (labels,) = session.run(None, {"image": np.zeros((1, 8, 9, 3), np.uint8)})
    assert labels.shape == (1, 8, 9)
