"""FCN-AlexNet in both flavours: exact output size, the reference's parameter counts, the
grouped and normalised Caffe trunk, torchvision's ImageNet surgery, and the dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import alexnet

from model.nets.alexnet import (
    AlexNetFCN32s,
    CaffeAlexNetFCN32s,
    load_alexnet,
    torchvision_alexnet_state_dict,
)
from model.nets.backbones import WeightsError
from model.nets.base import ModelSpec, bilinear_kernel, build_fcn, network_tiling
from model.nets.preprocessing import TORCHVISION

TINY = 1 / 32
BACKBONES = ("caffe-alexnet", "alexnet")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_size_is_input_size_for_every_size_up_to_64(backbone: str) -> None:
    torch.manual_seed(0)
    net = build_fcn(ModelSpec("fcn32s", 3, TINY, backbone=backbone)).eval()
    nn.init.normal_(net.score_fr.weight)
    with torch.no_grad():
        for size in range(1, 65):
            # Every height, each with another width, so both axes see every size.
            logits = net(torch.randn(1, 3, size, 65 - size))
            assert logits.shape == (1, 3, size, 65 - size), size
            assert logits.abs().sum() > 0, size


def count(*layers: tuple[int, int, int, int]) -> int:
    """Parameters of convolutions given as (out, in per group, kernel, bias 0/1)."""
    return sum(out * c_in * k * k + out * bias for out, c_in, k, bias in layers)


@pytest.mark.slow
def test_full_width_parameter_counts_are_the_references() -> None:
    # voc-fcn-alexnet/val.prototxt: conv1 96x3x11x11, conv2 256x48x5x5 (group 2), conv3
    # 384x256x3x3, conv4 384x192x3x3 and conv5 256x192x3x3 (group 2), fc6 4096x256x6x6, fc7
    # 4096x4096, score_fr 21x4096, upscore 21x21x63x63 without bias.
    trunk = count(
        (96, 3, 11, 1), (256, 48, 5, 1), (384, 256, 3, 1), (384, 192, 3, 1), (256, 192, 3, 1),
        (4096, 256, 6, 1), (4096, 4096, 1, 1),
    )  # fmt: skip
    assert trunk == 56_868_224  # the paper's Table 1: 57M parameters
    caffe = trunk + count((21, 4096, 1, 1), (21, 21, 63, 0))
    assert caffe == 58_704_590
    net = build_fcn(ModelSpec("fcn32s", 21, backbone="caffe-alexnet"))
    assert sum(p.numel() for p in net.parameters()) == caffe
    assert net.conv2.groups == net.conv4.groups == net.conv5.groups == 2
    # torchvision's AlexNet: 64/192/384/256/256 channels, no groups; the same head.
    torchvision = count(
        (64, 3, 11, 1), (192, 64, 5, 1), (384, 192, 3, 1), (256, 384, 3, 1), (256, 256, 3, 1),
        (4096, 256, 6, 1), (4096, 4096, 1, 1), (21, 4096, 1, 1), (21, 21, 63, 0),
    )  # fmt: skip
    assert torchvision == 58_840_206
    net = build_fcn(ModelSpec("fcn32s", 21, backbone="alexnet"))
    assert sum(p.numel() for p in net.parameters()) == torchvision


def test_caffe_flavour_normalises_after_pool1_and_pool2_as_caffe() -> None:
    # Caffe's LRN (k = 1, alpha over the window size) on a constant map: x / (1 + a/n *
    # sum of the squares in the window) ** beta, the window cut at the channel edges.
    net = CaffeAlexNetFCN32s(width=TINY)
    x = torch.full((1, 7, 2, 2), 10.0)
    window = torch.tensor([3, 4, 5, 5, 5, 4, 3], dtype=torch.float32)
    expected = 10.0 / (1 + 1e-4 / 5 * 100 * window) ** 0.75
    assert torch.allclose(net.norm(x)[0, :, 0, 0], expected)
    assert "norm" not in {name.split(".")[0] for name in net.state_dict()}  # no weights
    assert AlexNetFCN32s.lrn is False


@pytest.mark.parametrize("backbone", BACKBONES)
def test_upsampling_is_bilinear_63_stride_32_and_frozen(backbone: str) -> None:
    net = build_fcn(ModelSpec("fcn32s", 4, TINY, backbone=backbone))
    assert net.upscore.kernel_size == (63, 63)
    assert net.upscore.stride == (32, 32)
    assert torch.equal(net.upscore.weight[2, 2], bilinear_kernel(63))
    assert not net.upscore.weight[2, 1].any()
    assert not net.upscore.weight.requires_grad
    assert net.tiling == network_tiling("fcn32s", backbone)
    assert (net.tiling.align, net.tiling.context) == (32, 208)
    assert net.spec.backbone == backbone


def small_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet AlexNet layout and shapes, random values (no download)."""
    torch.manual_seed(0)
    return dict(alexnet(weights=None).state_dict())


@pytest.mark.slow
def test_convolutionised_classifier_gives_torchvision_fc7_at_the_centre() -> None:
    state = small_state_dict()
    classifier = alexnet(weights=None).eval()
    classifier.load_state_dict(state)
    net = AlexNetFCN32s(21).eval()
    assert load_alexnet(net, state) == TORCHVISION
    assert not net.score_fr.weight.any()
    assert not net.score_fr.bias.any()

    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        # torchvision's fc7: the classifier up to fc7's ReLU, on a 224x224 image.
        expected = classifier.classifier[:6](torch.flatten(classifier.avgpool(
            classifier.features(image)), 1))  # fmt: skip
        # Ours with conv1 padded as torchvision pads it (2, not 100), so that fc6's single
        # position sees the image exactly as torchvision's classifier does.
        net.conv1.padding = (2, 2)
        pool5 = net.trunk(image)
        assert pool5.shape == (1, 256, 6, 6)
        fc7 = torch.relu(net.fc7(torch.relu(net.fc6(pool5))))
    assert fc7.shape == (1, 4096, 1, 1)
    assert (expected > 0).sum() > 1000  # most fc7 units active: a comparison of values
    error = (fc7.flatten(1) - expected).abs().max() / expected.abs().max()
    assert error <= 1e-5, f"relative error {error:.1e}"


@pytest.mark.slow
def test_surgery_refuses_other_state_dicts(tmp_path: Path) -> None:
    state = small_state_dict()
    with pytest.raises(WeightsError, match=r"missing features\.0\.weight"):
        load_alexnet(AlexNetFCN32s(), {k: v for k, v in state.items() if "features.0" not in k})
    with pytest.raises(WeightsError, match=r"features\.0: network expects \(2, 3, 11, 11\)"):
        load_alexnet(AlexNetFCN32s(width=TINY), state)
    saved = tmp_path / "alexnet.pt"
    torch.save(state, saved)
    assert torchvision_alexnet_state_dict(saved).keys() == state.keys()
    with pytest.raises(WeightsError, match="no such AlexNet weights file"):
        torchvision_alexnet_state_dict(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("backbone", "arch", "message"),
    [
        ("alexnet", "fcn8s", "no architecture 'fcn8s' on backbone 'alexnet'.*alexnet: fcn32s"),
        ("caffe-alexnet", "fcn16s", "vgg16: fcn32s, fcn16s, fcn8s, fcn8s-atonce"),
        ("resnet", "fcn32s", "unknown backbone 'resnet'; choose one of vgg16, alexnet"),
    ],
)
def test_unknown_pairs_name_the_networks_there_are(backbone: str, arch: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_fcn(ModelSpec(arch, 21, TINY, backbone=backbone))


def test_spec_round_trips_the_backbone_and_old_specs_are_vgg16() -> None:
    spec = ModelSpec("fcn32s", 5, TINY, backbone="caffe-alexnet")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert build_fcn(spec).spec == spec
    old = {"arch": "fcn8s", "num_classes": 5, "width": TINY}
    assert ModelSpec.from_dict(old).backbone == "vgg16"
