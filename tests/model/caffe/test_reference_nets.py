"""The reference's PASCAL-Context, SIFT Flow and NYUDv2 colour nets from Caffe files: ``fcn
convert-caffe`` on random weights under their layer names scores as OpenCV's run of the
reference's net (its pascalcontext-fcn*/, siftflow-fcn*/ and nyud-fcn32s-color/ net.py, as a
deploy prototxt) does, both heads of SIFT Flow's, and the checkpoint carries the data set's
classes and input mean."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.caffe.caffemodel import CaffeModelError
from model.caffe.convert import convert_caffemodel
from model.caffe.datasets import DATASETS
from model.checkpoint import load_checkpoint
from model.cli import main
from model.data.classes import CONTEXT_CLASSES, NYUD_CLASSES, SIFTFLOW_CLASSES
from model.nets.base import ModelSpec
from tests.model.caffe import caffe_writer as cw

WIDTH = 1 / 16  # conv1 4 channels, fc6/fc7 256
# name: (arch, data set, classes), as model.zoo.registry names the published files.
NETS = {
    "context-fcn32s": ("fcn32s", "context", CONTEXT_CLASSES),
    "context-fcn16s": ("fcn16s", "context", CONTEXT_CLASSES),
    "context-fcn8s": ("fcn8s", "context", CONTEXT_CLASSES),
    "nyud-fcn32s-color": ("fcn32s", "nyud", NYUD_CLASSES),
}
# Where the reference's crop layers cut (caffe.coord_map's offsets for these nets).
POOLS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")


def deploy_prototxt(
    arch: str, classes: int, height: int, width: int, geometry_classes: int = 0
) -> str:
    """The reference net.py's net for ``arch`` at WIDTH, its data layer an input of the given
    size (as a deploy net); with ``geometry_classes``, siftflow-fcn*/net.py's two heads, whose
    scores are ``score_sem`` and ``score_geo``."""
    lines = [f'input: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {height} dim: {width} }}']

    def layer(name: str, kind: str, bottoms: tuple[str, ...], params: str = "") -> None:
        inputs = " ".join(f'bottom: "{b}"' for b in bottoms)
        lines.append(f'layer {{ name: "{name}" type: "{kind}" {inputs} top: "{name}" {params} }}')

    def conv(name: str, bottom: str, out: int, kernel: int, pad: int, *, relu: bool = True) -> None:
        param = f"num_output: {out} pad: {pad} kernel_size: {kernel}"
        layer(name, "Convolution", (bottom,), f"convolution_param {{ {param} }}")
        if relu:
            lines.append(f'layer {{ name: "r{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}')

    def up(name: str, bottom: str, kernel: int, stride: int, classes: int) -> None:
        param = f"num_output: {classes} bias_term: false kernel_size: {kernel} stride: {stride}"
        layer(name, "Deconvolution", (bottom,), f"convolution_param {{ {param} }}")

    def crop(name: str, bottom: str, like: str, offset: int) -> None:
        layer(name, "Crop", (bottom, like), f"crop_param {{ axis: 2 offset: {offset} }}")

    def fuse(name: str, a: str, b: str) -> None:
        layer(name, "Eltwise", (a, b), "eltwise_param { operation: SUM }")

    def head(s: str, classes: int) -> None:
        conv(f"score_fr{s}", "drop7", classes, 1, 0, relu=False)
        if arch == "fcn32s":
            up(f"upscore{s}", f"score_fr{s}", 64, 32, classes)
            crop(f"score{s}", f"upscore{s}", "data", 19)
            return
        up(f"upscore2{s}", f"score_fr{s}", 4, 2, classes)
        conv(f"score_pool4{s}", "pool4", classes, 1, 0, relu=False)
        crop(f"score_pool4c{s}", f"score_pool4{s}", f"upscore2{s}", 5)
        fuse(f"fuse_pool4{s}", f"upscore2{s}", f"score_pool4c{s}")
        if arch == "fcn16s":
            up(f"upscore16{s}", f"fuse_pool4{s}", 32, 16, classes)
            crop(f"score{s}", f"upscore16{s}", "data", 27)
            return
        up(f"upscore_pool4{s}", f"fuse_pool4{s}", 4, 2, classes)
        conv(f"score_pool3{s}", "pool3", classes, 1, 0, relu=False)
        crop(f"score_pool3c{s}", f"score_pool3{s}", f"upscore_pool4{s}", 9)
        fuse(f"fuse_pool3{s}", f"upscore_pool4{s}", f"score_pool3c{s}")
        up(f"upscore8{s}", f"fuse_pool3{s}", 16, 8, classes)
        crop(f"score{s}", f"upscore8{s}", "data", 31)

    bottom = "data"
    for index, (name, _, out) in enumerate(cw.VGG16_CONVS):
        conv(name, bottom, max(1, round(out * WIDTH)), 3, 100 if index == 0 else 1)
        bottom = name
        if name in POOLS:
            pool = f"pool{POOLS.index(name) + 1}"
            layer(pool, "Pooling", (name,), "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            bottom = pool
    fc = round(4096 * WIDTH)
    conv("fc6", "pool5", fc, 7, 0)
    layer("drop6", "Dropout", ("fc6",))
    conv("fc7", "drop6", fc, 1, 0)
    layer("drop7", "Dropout", ("fc7",))
    if not geometry_classes:
        head("", classes)
    else:
        head("_sem", classes)
        head("_geo", geometry_classes)
    return "\n".join(lines) + "\n"


def reference_file(
    path: Path, arch: str, classes: int, seed: int = 0, geometry_classes: int = 0
) -> Path:
    """Random weights in the reference's layer names, scaled so that the scores stay of
    order one through fifteen ReLU layers."""
    layers = cw.reference_layers(arch, WIDTH, classes, seed=seed, geometry_classes=geometry_classes)
    for layer in layers:
        for values in layer.blobs:
            if values.ndim == 1:
                continue
            # A transposed convolution of stride k/2 sums over 4 taps per input channel.
            fan_in = 4 * values.shape[1] if layer.type == "Deconvolution" else values[0].size
            np.multiply(values, np.float32(1.5 / np.sqrt(fan_in)), out=values)
    cw.write(path, cw.net(layers))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
def test_converted_net_scores_as_the_reference_caffe_net(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    arch, dataset, classes = NETS[name]
    weights = reference_file(tmp_path / f"{name}.caffemodel", arch, len(classes))
    out = tmp_path / f"{name}.pt"
    assert main(["convert-caffe", str(weights), "--out", str(out)]) == 0
    assert f"{arch}, {len(classes)} classes ({dataset})" in capsys.readouterr().out
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec == ModelSpec(arch, len(classes), WIDTH)
    assert (checkpoint.dataset, checkpoint.classes) == (dataset, list(classes))
    assert checkpoint.preprocessing == DATASETS[dataset].preprocessing

    height, width = 37, 50
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(deploy_prototxt(arch, len(classes), height, width))
    caffe = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    # The data layer's output: BGR minus the mean, so about -120..140.
    image = np.random.default_rng(1).uniform(-120, 140, (1, 3, height, width)).astype(np.float32)
    caffe.setInput(image)
    expected = caffe.forward("score")
    with torch.no_grad():
        scores = checkpoint.build_model().eval()(torch.from_numpy(image)).numpy()
    assert scores.shape == expected.shape == (1, len(classes), height, width)
    assert np.abs(expected).max() > 0.1  # the comparison is between non-trivial scores
    error = np.abs(scores - expected).max() / np.abs(expected).max()
    assert error <= 1e-4, f"relative error {error:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_converted_sift_flow_net_scores_both_heads_as_the_reference_caffe_net(
    tmp_path: Path, arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = reference_file(tmp_path / f"siftflow-{arch}.caffemodel", arch, 33, 0, 3)
    out = tmp_path / "siftflow.pt"
    assert main(["convert-caffe", str(weights), "--out", str(out)]) == 0
    assert f"{arch}, 33 classes (siftflow) and 3 geometric" in capsys.readouterr().out
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec == ModelSpec(arch, 33, WIDTH, geometry_classes=3)
    assert (checkpoint.dataset, checkpoint.classes) == ("siftflow", list(SIFTFLOW_CLASSES))
    # siftflow_layers.py's mean, BGR.
    assert checkpoint.preprocessing.mean == (114.578, 115.294, 108.353)

    height, width = 29, 41
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(deploy_prototxt(arch, 33, height, width, geometry_classes=3))
    caffe = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    image = np.random.default_rng(2).uniform(-120, 140, (1, 3, height, width)).astype(np.float32)
    caffe.setInput(image)
    expected = caffe.forward(["score_sem", "score_geo"])
    with torch.no_grad():
        scores = checkpoint.build_model().eval()(torch.from_numpy(image), geometry=True)
    for ours, theirs, classes in zip(scores, expected, (33, 3), strict=True):
        assert ours.shape == theirs.shape == (1, classes, height, width)
        assert np.abs(theirs).max() > 0.1
        error = np.abs(ours.numpy() - theirs).max() / np.abs(theirs).max()
        assert error <= 1e-4, f"relative error {error:.2e}"


def test_each_data_set_takes_its_data_layers_mean(tmp_path: Path) -> None:
    nyud = reference_file(tmp_path / "nyud.caffemodel", "fcn32s", 40)
    checkpoint = convert_caffemodel(nyud)
    # nyud_layers.py's colour mean, BGR; PASCAL-Context's is VOC's to three decimals.
    assert checkpoint.preprocessing.mean == (116.190, 97.203, 92.318)
    assert checkpoint.preprocessing.channel_order == "BGR"
    assert checkpoint.preprocessing.mean_rgb_255 == (92, 97, 116)
    assert DATASETS["context"].preprocessing.mean == (104.007, 116.669, 122.679)
    with pytest.raises(CaffeModelError, match=r"score_fr.* \(scores for 40 classes, not 60\)"):
        convert_caffemodel(nyud, dataset="context")
    with pytest.raises(CaffeModelError, match=r"no reference RGB net was trained on 'sun'"):
        convert_caffemodel(nyud, dataset="sun")
