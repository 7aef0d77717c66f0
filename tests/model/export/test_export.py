"""The exported graph follows the schema-1 contract and matches PyTorch through ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract.schema import REQUIRED_KEYS
from model.checkpoint import Checkpoint
from model.export.graph import SegmentationGraph
from model.export.metadata import read_metadata
from tests.factory import ARCHS, PREPROCESSING, exported

REPO = Path(__file__).resolve().parents[3]
# Thresholds of the contract: labels equal to PyTorch's on this share of pixels.
AGREEMENT = {False: 0.9999, True: 0.995}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def reference(checkpoint: Checkpoint, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch float32 labels and logits for a uint8 [N, H, W, 3] batch."""
    graph = SegmentationGraph(checkpoint.build_model(), checkpoint.preprocessing, with_scores=True)
    with torch.no_grad():
        labels, _, logits = graph.eval()(torch.from_numpy(image))
    return labels.numpy(), logits.numpy()


def top_probability_x255(logits: np.ndarray) -> np.ndarray:
    """round(255 x max softmax) over C of [N, C, H, W] logits, in float64 by numpy alone."""
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    top = 1 / np.exp(shifted).sum(1)  # the largest probability: exp(0) / sum
    return np.round(255 * top)


def images(*shapes: tuple[int, int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for shape in shapes]


def test_graph_has_the_contract_inputs_outputs_and_metadata() -> None:
    _, path = exported("fcn8s")
    onnx.checker.check_model(str(path), full_check=True)
    sess = session(path)
    (image,) = sess.get_inputs()
    assert (image.name, image.type, image.shape) == ("image", "tensor(uint8)", ["N", "H", "W", 3])
    labels, confidence = sess.get_outputs()
    assert (labels.name, labels.type, labels.shape) == ("labels", "tensor(uint8)", ["N", "H", "W"])
    assert (confidence.name, confidence.type, confidence.shape) == (
        "confidence",
        "tensor(uint8)",
        ["N", "H", "W"],
    )
    meta = sess.get_modelmeta().custom_metadata_map
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["fcn.schema"] == "1"
    assert meta["fcn.arch"] == "fcn8s"
    assert json.loads(meta["fcn.classes"]) == [f"class{i}" for i in range(5)]
    assert json.loads(meta["fcn.palette"])[1] == [128, 0, 0]
    assert meta["fcn.ignore_index"] == "255"
    assert json.loads(meta["fcn.metrics"]) == {"mean_iu": 0.25}
    assert meta["fcn.precision"] == "fp32"
    assert json.loads(meta["fcn.outputs"]) == ["labels", "confidence"]


@pytest.mark.parametrize(
    "arch", [a if a == "fcn8s" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS]
)
def test_confidence_is_255_times_the_top_softmax_probability_within_1(arch: str) -> None:
    checkpoint, path = exported(arch)
    sess = session(path)
    for image in images((1, 1, 1), (2, 45, 31)):
        confidence, labels = sess.run(["confidence", "labels"], {"image": image})
        expected_labels, logits = reference(checkpoint, image)
        assert confidence.dtype == np.uint8
        assert confidence.shape == image.shape[:3]
        expected = top_probability_x255(logits)
        assert np.abs(confidence.astype(np.int16) - expected).max() <= 1
        assert (labels == expected_labels).mean() >= 0.9999
        assert confidence.min() >= 255 // 5  # a top class has at least 1/C


def test_an_export_without_confidence_has_labels_alone() -> None:
    _, path = exported("fcn8s", confidence=False)
    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == ["labels"]
    assert json.loads(sess.get_modelmeta().custom_metadata_map["fcn.outputs"]) == ["labels"]


@pytest.mark.slow
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_matches_pytorch_on_sizes_unlike_the_export_size(
    arch: str, fp16: bool
) -> None:
    checkpoint, path = exported(arch, fp16=fp16)
    sess = session(path)
    agree = total = 0
    # The export traced a batch of 2 at 67x91; none of these is that size.
    for image in images((1, 1, 1), (1, 7, 300), (2, 45, 31)):
        labels, confidence = sess.run(["labels", "confidence"], {"image": image})
        expected, logits = reference(checkpoint, image)
        assert labels.dtype == confidence.dtype == np.uint8
        if not fp16:  # fp16 logits move it further (the verifier reports it, holds fp32)
            assert np.abs(confidence.astype(np.int16) - top_probability_x255(logits)).max() <= 1
        assert labels.shape == image.shape[:3]
        agree += int((labels == expected).sum())
        total += expected.size
    assert agree / total >= AGREEMENT[fp16]


@pytest.mark.slow
def test_scores_output_matches_pytorch_logits_within_1e_4() -> None:
    checkpoint, path = exported("fcn8s", with_scores=True)
    sess = session(path)
    assert [(o.name, o.type) for o in sess.get_outputs()] == [
        ("labels", "tensor(uint8)"),
        ("confidence", "tensor(uint8)"),
        ("scores", "tensor(float)"),
    ]
    assert sess.get_outputs()[2].shape == ["N", 5, "H", "W"]
    for image in images((1, 1, 1), (2, 29, 57)):
        labels, _, scores = sess.run(None, {"image": image})
        expected_labels, expected = reference(checkpoint, image)
        assert scores.shape == expected.shape
        # 1e-4 of the logits' magnitude: float32 sums over thousands of terms differ by ~1e-6.
        assert np.abs(scores - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
        assert (labels == expected_labels).mean() >= 0.9999


def test_crop_follows_the_runtime_shape_far_from_the_export_size() -> None:
    checkpoint, path = exported("fcn8s")
    sess = session(path)
    for image in images((1, 1, 1), (1, 7, 300), (1, 333, 1001)):
        (labels,) = sess.run(["labels"], {"image": image})
        expected, _ = reference(checkpoint, image)
        assert labels.shape == image.shape[:3]
        assert (labels == expected).mean() >= 0.9999


@pytest.mark.slow
def test_one_session_answers_three_sizes_and_batches_of_1_and_3() -> None:
    checkpoint, path = exported("fcn16s")
    sess = session(path)
    for image in images((1, 1, 1), (3, 45, 31), (1, 120, 97), (3, 1, 1)):
        (labels,) = sess.run(["labels"], {"image": image})
        expected, _ = reference(checkpoint, image)
        assert labels.shape == image.shape[:3]
        assert (labels == expected).mean() >= 0.9999
    # Each image of a batch gets what it would get alone.
    (batch,) = images((3, 40, 50))
    together = sess.run(None, {"image": batch})
    for i in range(3):
        alone = sess.run(None, {"image": batch[i : i + 1]})
        for joint, single in zip(together, alone, strict=True):  # labels and confidence
            assert np.array_equal(joint[i], single[0])


@pytest.mark.slow
def test_fp16_halves_the_weights_but_keeps_uint8_image_and_labels() -> None:
    _, fp32 = exported("fcn8s")
    _, fp16 = exported("fcn8s", fp16=True)
    model = onnx.load(fp16)
    weights = [i for i in model.graph.initializer if i.name.startswith("net.")]
    assert weights
    assert all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    sess = session(fp16)
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("image", "tensor(uint8)")]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [
        ("labels", "tensor(uint8)"),
        ("confidence", "tensor(uint8)"),
    ]
    assert sess.get_modelmeta().custom_metadata_map["fcn.precision"] == "fp16"
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size


@pytest.mark.slow
def test_256_classes_or_more_export_int32_labels() -> None:
    _, path = exported("fcn8s", num_classes=256)
    sess = session(path)
    assert sess.get_outputs()[0].type == "tensor(int32)"
    assert sess.get_outputs()[1].type == "tensor(uint8)"  # confidence is a byte whatever C is
    labels, confidence = sess.run(None, {"image": np.zeros((1, 8, 9, 3), np.uint8)})
    assert labels.shape == confidence.shape == (1, 8, 9)


READER = """
import json, sys
sys.modules["torch"] = sys.modules["onnx"] = None  # any torch or onnx import now fails
import onnxruntime as ort
from contract.schema import check_model, session_tensors
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = check_model(session.get_modelmeta().custom_metadata_map,
                   session_tensors(session.get_inputs()), session_tensors(session.get_outputs()),
                   sys.argv[1])
print(json.dumps({
    **meta.to_dict(),
    "loaded": [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "model")
               and sys.modules[m] is not None],
}))
"""


@pytest.mark.parametrize(
    ("arch", "fp16"),
    [("fcn8s", False), pytest.param("fcn8s-atonce", True, marks=pytest.mark.slow)],
)
def test_the_contract_reads_an_export_without_torch_or_onnx(arch: str, fp16: bool) -> None:
    checkpoint, path = exported(arch, fp16=fp16)
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    assert meta.pop("loaded") == []
    assert meta == read_metadata(path).to_dict()  # ONNX Runtime's view equals onnx's
    assert meta["arch"] == arch
    assert meta["classes"] == checkpoint.classes
    assert meta["palette"] == [list(c) for c in checkpoint.palette]
    assert meta["width"] == checkpoint.spec.width
    assert meta["precision"] == ("fp16" if fp16 else "fp32")
    assert meta["preprocessing"]["channel_order"] == PREPROCESSING[arch].channel_order
    assert meta["ignore_index"] == 255


def test_model_file_is_readable_by_other_users() -> None:
    # A server in a container often runs as another user than the one who exported.
    _, path = exported("fcn8s")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
