"""The reference FCN-AlexNet from Caffe files: ``fcn convert-caffe`` on a voc-fcn-alexnet
.caffemodel runs as the Caffe net does (run by OpenCV's Caffe importer from the reference's
prototxt), and BVLC's ImageNet AlexNet initialises the trunk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.caffe.caffemodel import CaffeModelError
from model.caffe.convert import CAFFE_BACKBONES, convert_caffemodel, load_caffe_alexnet
from model.checkpoint import load_checkpoint
from model.cli import main
from model.commands import convert_caffe
from model.nets.alexnet import CaffeAlexNetFCN32s
from model.nets.base import ModelSpec, bilinear_kernel, build_fcn
from model.nets.preprocessing import CAFFE
from tests.model.caffe import caffe_writer as cw

WIDTH = 1 / 16  # conv1 6 channels, conv2 16, conv3/4 24, fc6/fc7 256


def deploy_prototxt(channels: dict[str, int], height: int, width: int, classes: int = 21) -> str:
    """The reference voc-fcn-alexnet/val.prototxt, its Python data layer an input of the
    given size (as a deploy net), channel counts as given."""
    layers = [f'input: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {height} dim: {width} }}']

    def conv(
        name: str, bottom: str, out: int, kernel: int, *, pad: int, group: int, stride: int
    ) -> None:
        layers.append(
            f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f"  convolution_param {{ num_output: {out} pad: {pad} kernel_size: {kernel} "
            f"group: {group} stride: {stride} }} }}"
        )
        relu = name.replace("conv", "relu").replace("fc", "relu")
        layers.append(f'layer {{ name: "{relu}" type: "ReLU" bottom: "{name}" top: "{name}" }}')

    def pool(name: str, bottom: str) -> None:
        layers.append(
            f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            "  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }"
        )

    def lrn(name: str, bottom: str) -> None:
        layers.append(
            f'layer {{ name: "{name}" type: "LRN" bottom: "{bottom}" top: "{name}"\n'
            "  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }"
        )

    conv("conv1", "data", channels["conv1"], 11, pad=100, group=1, stride=4)
    pool("pool1", "conv1")
    lrn("norm1", "pool1")
    conv("conv2", "norm1", channels["conv2"], 5, pad=2, group=2, stride=1)
    pool("pool2", "conv2")
    lrn("norm2", "pool2")
    conv("conv3", "norm2", channels["conv3"], 3, pad=1, group=1, stride=1)
    conv("conv4", "conv3", channels["conv4"], 3, pad=1, group=2, stride=1)
    conv("conv5", "conv4", channels["conv5"], 3, pad=1, group=2, stride=1)
    pool("pool5", "conv5")
    conv("fc6", "pool5", channels["fc6"], 6, pad=0, group=1, stride=1)
    conv("fc7", "fc6", channels["fc6"], 1, pad=0, group=1, stride=1)
    layers.append(
        'layer { name: "score_fr" type: "Convolution" bottom: "fc7" top: "score_fr"\n'
        f"  convolution_param {{ num_output: {classes} pad: 0 kernel_size: 1 }} }}"
    )
    layers.append(
        'layer { name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore"\n'
        f"  convolution_param {{ num_output: {classes} bias_term: false kernel_size: 63 "
        "stride: 32 } }"
    )
    layers.append(
        'layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"\n'
        "  crop_param { axis: 2 offset: 18 } }"
    )
    return 'name: "fcn-alexnet"\n' + "\n".join(layers) + "\n"


def alexnet_file(
    tmp_path: Path, *, imagenet: bool = False, seed: int = 0
) -> tuple[Path, list[cw.Layer]]:
    layers = cw.alexnet_layers(WIDTH, imagenet=imagenet, seed=seed)
    # Weights near the scale of trained ones, so LRN's (1 + 2e-5 * sum x^2) matters but the
    # activations stay in float32's comfortable range.
    for layer in layers:
        for values in layer.blobs:
            fan_in = values[0].size if values.ndim > 1 else 1
            np.multiply(values, np.float32(1.5 / np.sqrt(fan_in)), out=values)
    name = "bvlc_alexnet.caffemodel" if imagenet else "fcn-alexnet.caffemodel"
    path = tmp_path / name
    cw.write(path, cw.net(layers))
    return path, layers


@pytest.mark.parametrize("size", [(1, 1), (45, 71), (97, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_converted_fcn_alexnet_equals_the_caffe_net(tmp_path: Path, size: tuple[int, int]) -> None:
    path, _ = alexnet_file(tmp_path, seed=sum(size))
    checkpoint = convert_caffemodel(path)  # backbone, architecture and width from the file
    assert checkpoint.spec == ModelSpec("fcn32s", 21, WIDTH, backbone="caffe-alexnet")
    assert checkpoint.preprocessing == CAFFE
    net = checkpoint.build_model().eval()
    assert isinstance(net, CaffeAlexNetFCN32s)

    height, width = size
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(deploy_prototxt(cw.alexnet_channels(WIDTH), height, width))
    caffe = cv2.dnn.readNetFromCaffe(str(prototxt), str(path))
    rng = np.random.default_rng(0)
    image = rng.uniform(-120, 130, (1, 3, height, width)).astype(np.float32)
    caffe.setInput(image)
    expected = caffe.forward("score")
    with torch.no_grad():
        logits = net(torch.from_numpy(image)).numpy()
    assert logits.shape == expected.shape == (1, 21, height, width)
    assert np.abs(expected).max() > 0.1  # the comparison is between non-trivial logits
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert error <= 1e-4, f"relative error {error:.2e}"


def test_convert_caffe_recognises_fcn_alexnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, layers = alexnet_file(tmp_path)
    out = tmp_path / "alexnet.pt"
    assert main(["convert-caffe", str(path), "--out", str(out)]) == 0
    assert "fcn32s, 21 classes (voc)" in capsys.readouterr().out
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec.backbone == "caffe-alexnet"
    blobs = {layer.name: layer.blobs for layer in layers if layer.blobs}
    state = checkpoint.state_dict
    assert state.keys() == {f"{n}.{k}" for n in blobs for k in ("weight", "bias")} - {
        "upscore.bias"
    }
    for name, values in blobs.items():
        assert torch.equal(state[f"{name}.weight"], torch.from_numpy(values[0])), name
    # The grouped conv2 keeps Caffe's [out, in / group, k, k] blob as it is.
    assert tuple(state["conv2.weight"].shape) == (16, 3, 5, 5)


def test_the_command_offers_the_backbones_the_converter_knows() -> None:
    assert convert_caffe.CAFFE_BACKBONES == CAFFE_BACKBONES


def test_a_vgg16_arch_on_alexnet_weights_is_refused(tmp_path: Path) -> None:
    path, _ = alexnet_file(tmp_path)
    with pytest.raises(CaffeModelError, match="no Caffe fcn8s on caffe-alexnet"):
        convert_caffemodel(path, "fcn8s", backbone="caffe-alexnet")
    with pytest.raises(CaffeModelError, match="not the weights of fcn8s: it lacks layers conv1_1"):
        convert_caffemodel(path, "fcn8s")
    with pytest.raises(CaffeModelError, match="Its layers are those of caffe-alexnet fcn32s"):
        convert_caffemodel(path, backbone="vgg16")


def test_bvlc_alexnet_initialises_the_trunk(tmp_path: Path) -> None:
    path, layers = alexnet_file(tmp_path, imagenet=True, seed=3)
    net = build_fcn(ModelSpec("fcn32s", 21, WIDTH, backbone="caffe-alexnet"))
    assert isinstance(net, CaffeAlexNetFCN32s)
    with torch.no_grad():
        net.score_fr.weight.fill_(1.0)
    assert load_caffe_alexnet(net, path) == CAFFE
    blobs = {layer.name: layer.blobs for layer in layers if layer.blobs}
    assert torch.equal(net.conv4.weight, torch.from_numpy(blobs["conv4"][0]))
    # The ImageNet fc6 [4096, 256*6*6] as a 6x6 convolution over pool5, channel-major.
    channels = net.conv5.out_channels
    assert torch.equal(
        net.fc6.weight[:, 5, 2, 3], torch.from_numpy(blobs["fc6"][0][:, 5 * 36 + 2 * 6 + 3])
    )
    assert torch.equal(net.fc6.weight.flatten(1), torch.from_numpy(blobs["fc6"][0]))
    assert net.fc6.weight.shape[1] == channels
    assert not net.score_fr.weight.any()
    assert torch.equal(net.upscore.weight[4, 4], bilinear_kernel(63))


def test_bvlc_alexnet_refuses_other_nets_and_files(tmp_path: Path) -> None:
    path, _ = alexnet_file(tmp_path, imagenet=True)
    vgg = build_fcn(ModelSpec("fcn32s", 21, WIDTH))
    with pytest.raises(
        CaffeModelError, match="initialises a caffe-alexnet network, not one on vgg16"
    ):
        load_caffe_alexnet(vgg, path)
    fcn, _ = alexnet_file(tmp_path)
    net = build_fcn(ModelSpec("fcn32s", 21, WIDTH, backbone="caffe-alexnet"))
    with pytest.raises(CaffeModelError, match="not Caffe's BVLC AlexNet: .*holds a caffe-alexnet"):
        load_caffe_alexnet(net, fcn)
