"""FCN-AlexNet (FCN-32s on AlexNet, Table 1 of the paper) in two flavours.

``caffe-alexnet`` is the reference's ``voc-fcn-alexnet/net.py`` layer for layer: Caffe's
AlexNet with its grouped conv2/4/5 and LRN after pool1 and pool2, so the released
``fcn-alexnet-pascal.caffemodel`` and ``bvlc_alexnet.caffemodel`` map by name. ``alexnet``
is torchvision's AlexNet (64/192/384/256/256 channels, no groups, no LRN) under the same
names, initialised from torchvision's ImageNet weights by surgery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from model.nets.backbones import WeightsError, copy_weights, read_state_dict, zero_score_layers
from model.nets.base import FCNBase, crop, scaled
from model.nets.preprocessing import TORCHVISION, Preprocessing

# conv1 pads by 100, as the reference: a 1x1 input still leaves a 6x6 pool5 for fc6.
CONV1_PAD = 100
# Where upscore's output lines up with the input: the centre of upscore's 63-pixel kernel
# (31) less the input pixel that score_fr's first position centres on (13).
CROP_OFFSET = 18
# Caffe's LRN (ACROSS_CHANNELS, k = 1): the reference's norm1 and norm2.
LRN_SIZE, LRN_ALPHA, LRN_BETA = 5, 1e-4, 0.75
TRUNK_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


@dataclass(frozen=True)
class Conv:
    """One AlexNet convolution at width 1: channels out, kernel, stride, padding, groups."""

    out: int
    kernel: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    pool: bool = False  # a 3x3 stride-2 max pool follows (after the ReLU)


CAFFE_CONVS = {
    "conv1": Conv(96, 11, stride=4, pad=CONV1_PAD, pool=True),
    "conv2": Conv(256, 5, pad=2, groups=2, pool=True),
    "conv3": Conv(384, 3, pad=1),
    "conv4": Conv(384, 3, pad=1, groups=2),
    "conv5": Conv(256, 3, pad=1, groups=2, pool=True),
}
TORCHVISION_CONVS = {
    "conv1": Conv(64, 11, stride=4, pad=CONV1_PAD, pool=True),
    "conv2": Conv(192, 5, pad=2, pool=True),
    "conv3": Conv(384, 3, pad=1),
    "conv4": Conv(256, 3, pad=1),
    "conv5": Conv(256, 3, pad=1, pool=True),
}
# torchvision's alexnet: where each of our layers sits in ``features`` and ``classifier``.
TORCHVISION_INDEX = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
}


def grouped(channels: int, width: float, groups: int) -> int:
    """A width-scaled channel count that ``groups`` divides (Caffe's halves stay halves)."""
    return groups * scaled(channels // groups, width)


class AlexNetFCN(FCNBase):
    """AlexNet's five convolutions, fc6 (6x6) and fc7 as convolutions, score_fr, and a
    single 63x63 stride-32 upscore cropped at 18: the reference's FCN-32s on AlexNet."""

    arch = "fcn32s"
    upsampling_layers = ("upscore",)
    trunk_layers = TRUNK_LAYERS
    convs: ClassVar[Mapping[str, Conv]]
    lrn: ClassVar[bool]

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__(num_classes, width, learn_upsampling)
        # Every count even when any layer is grouped, so that a layer feeding a grouped one
        # splits evenly too.
        groups = max(conv.groups for conv in self.convs.values())
        channels = 3
        for name, conv in self.convs.items():
            out = grouped(conv.out, width, groups)
            layer = nn.Conv2d(channels, out, conv.kernel, conv.stride, conv.pad, groups=conv.groups)
            self.add_module(name, layer)
            channels = out
        self._add_classifier(channels, kernel_size=6)
        self.upscore = self._upsampling(63, 32)
        self.norm = nn.LocalResponseNorm(LRN_SIZE, LRN_ALPHA, LRN_BETA, k=1.0)
        self._init_weights()

    def trunk(self, x: Tensor) -> Tensor:
        """pool5 [N, 256 * width, h, w]."""
        for i, (name, conv) in enumerate(self.convs.items()):
            x = F.relu(getattr(self, name)(x), inplace=True)
            if conv.pool:
                # ceil_mode as Caffe's pooling: the crop offset holds for every input size.
                x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
                if self.lrn and i < 2:  # norm1 and norm2 follow pool1 and pool2
                    x = self.norm(x)
        return x

    def score(self, pool5: Tensor) -> Tensor:
        return self._classify(pool5)

    def forward(self, x: Tensor) -> Tensor:
        return crop(self.upscore(self.score(self.trunk(x))), CROP_OFFSET, x)


class CaffeAlexNetFCN32s(AlexNetFCN):
    """``voc-fcn-alexnet``: Caffe's AlexNet (grouped convolutions, LRN)."""

    backbone = "caffe-alexnet"
    convs = CAFFE_CONVS
    lrn = True
    context = 208


class AlexNetFCN32s(AlexNetFCN):
    """FCN-32s on torchvision's AlexNet."""

    backbone = "alexnet"
    convs = TORCHVISION_CONVS
    lrn = False
    context = 208


CAFFE_NETWORKS: dict[str, type[FCNBase]] = {CaffeAlexNetFCN32s.arch: CaffeAlexNetFCN32s}
TORCHVISION_NETWORKS: dict[str, type[FCNBase]] = {AlexNetFCN32s.arch: AlexNetFCN32s}


def torchvision_alexnet_state_dict(source: str | Path = "imagenet") -> dict[str, Tensor]:
    """torchvision's AlexNet state dict: ``"imagenet"`` downloads ``AlexNet_Weights.IMAGENET1K_V1``
    (cached by torch.hub); anything else is the path of a saved state dict."""
    if str(source) == "imagenet":
        from torchvision.models import AlexNet_Weights

        return dict(AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True))
    return read_state_dict(Path(source), "AlexNet")


def load_alexnet(net: AlexNetFCN32s, state_dict: Mapping[str, Tensor]) -> Preprocessing:
    """Copy torchvision AlexNet weights into ``net``'s convolutions, fc6 and fc7.

    classifier.1 is Linear(256*6*6, 4096) on pool5 (6x6 after the adaptive pool of a 224
    input) flattened channel-major, so its rows reshape to 6x6 kernels as they are. Returns
    the preprocessing the weights expect; score layers are left at zero.
    """
    keys = [f"{TORCHVISION_INDEX[n]}.{kind}" for n in TRUNK_LAYERS for kind in ("weight", "bias")]
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise WeightsError(
            f"not a torchvision AlexNet state dict: missing {', '.join(missing[:4])}"
        )
    for name in TRUNK_LAYERS:
        layer = getattr(net, name)
        source = TORCHVISION_INDEX[name]
        weight = state_dict[f"{source}.weight"]
        if name.startswith("fc"):
            if weight.numel() != layer.weight.numel():
                raise WeightsError(
                    f"{source}: {tuple(weight.shape)} cannot become {tuple(layer.weight.shape)} "
                    "(a width multiplier other than the weights')"
                )
            weight = weight.reshape(layer.weight.shape)
        copy_weights(layer.weight, weight, source)
        copy_weights(layer.bias, state_dict[f"{source}.bias"], source)
    zero_score_layers(net)
    return TORCHVISION


__all__ = [
    "CAFFE_NETWORKS",
    "CROP_OFFSET",
    "TORCHVISION_NETWORKS",
    "AlexNetFCN",
    "AlexNetFCN32s",
    "CaffeAlexNetFCN32s",
    "load_alexnet",
    "torchvision_alexnet_state_dict",
]
