"""FCN-GoogLeNet (Long et al. 2015, section 4.1, Table 1) on torchvision's GoogLeNet: the
inception trunk without its auxiliary classifiers, average pool, dropout and fc, a zero 1x1
score layer on inception5b, and FCN-32s/16s/8s upsampling with skips at strides 16 and 8.

Module names follow torchvision's ``GoogLeNet`` (``conv1.conv``, ``inception4e.branch2.1.bn``,
...), so its ImageNet state dict loads by name. Two differences from the paper's Caffe
GoogLeNet come with torchvision's weights: batch normalisation after every convolution, and a
3x3 (not 5x5) convolution in each inception's "5x5" branch (pytorch/vision#906), which makes
the net smaller than the paper's (5.6M parameters, not 6M) and its receptive field 379 pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nets.backbones import WeightsError, read_state_dict
from model.nets.base import FCNBase, crop, scaled
from model.nets.preprocessing import Preprocessing

# torchvision's ImageNet weights are the ported original ones and expect RGB in [-1, 1]:
# ``googlenet(weights=...)`` sets ``transform_input``, which turns the ImageNet-normalised
# image it is given back into (pixel / 255 - 0.5) / 0.5. Folding that into the normalisation
# gives the same input in one multiply-add, and keeps the network a plain logits net.
GOOGLENET = Preprocessing(
    name="torchvision-googlenet",
    channel_order="RGB",
    scale=1 / 255,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)

# (name, in-channel source, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) at width
# 1.0, as torchvision builds them; each block's input is the previous block's concatenation.
INCEPTIONS: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)
# conv1 pads by 14, not torchvision's 3: the least padding with which every input size, 1x1
# included, leaves maps the crops below fit in (as VGG16's conv1_1 pads by 100).
CONV1_PAD = 14
# Where input pixel x sits on each grid (index arithmetic over the strided layers):
# inception3b (stride 8) cell j is centred on x = 8j + 9 - CONV1_PAD, inception4e (stride 16)
# on 16j + 17 - CONV1_PAD, inception5b (stride 32, after the 2x2 maxpool4) on
# 32j + 25 - CONV1_PAD. Upsampling kernels are odd (2s - 1, centred on a pixel) where the grid
# offsets are whole pixels, and 4 where maxpool4's half-pixel shift must be undone, so every
# fused map and every output pixel lies exactly on the input grid.
CROP_32S = CONV1_PAD + 6  # upscore (k63 s32) onto the input
CROP_UPSCORE2 = 1  # upscore2 (k4 s2) onto inception4e's grid
CROP_FINAL = CONV1_PAD - 2  # upscore16 (k31 s16) and upscore8 (k15 s8) onto the input
# Output channels of the blocks the skips score, and of the trunk.
INCEPTION3B, INCEPTION4E, INCEPTION5B = "inception3b", "inception4e", "inception5b"


class FrozenBatchNorm2d(nn.Module):
    """Batch normalisation with fixed ImageNet statistics, in training as in evaluation.

    FCNs train on one image a batch (the paper's online learning): its statistics are those
    of one image's pixels, not of ImageNet, and updating the running averages from them would
    drift the trunk away from its pretrained weights. So the statistics are buffers never
    updated, and the mode (``train()``/``eval()``) changes nothing; the affine weight and bias
    still learn, in the role of the Caffe GoogLeNet's convolution biases. Not a ``_BatchNorm``,
    so ``SyncBatchNorm.convert_sync_batchnorm`` leaves it alone.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, channels: int, eps: float = 0.001):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class BasicConv2d(nn.Module):
    """torchvision's conv (no bias), batch norm (eps 0.001), ReLU."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            channels_in, channels_out, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = FrozenBatchNorm2d(channels_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """torchvision's inception block: four branches at one resolution, concatenated."""

    def __init__(self, channels_in: int, widths: tuple[int, int, int, int, int, int]):
        """``widths``: 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection."""
        c1, c3_reduce, c3, c5_reduce, c5, pool = widths
        super().__init__()
        self.branch1 = BasicConv2d(channels_in, c1, 1)
        self.branch2 = nn.Sequential(
            BasicConv2d(channels_in, c3_reduce, 1), BasicConv2d(c3_reduce, c3, 3, padding=1)
        )
        # 3x3, as torchvision's weights have it, where the paper's GoogLeNet has 5x5.
        self.branch3 = nn.Sequential(
            BasicConv2d(channels_in, c5_reduce, 1), BasicConv2d(c5_reduce, c5, 3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), BasicConv2d(channels_in, pool, 1)
        )
        self.channels_out = c1 + c3 + c5 + pool

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


# Pixels on either side a label depends on (``context``), measured by perturbation
# (tests/model/nets/test_googlenet.py): the trunk's receptive field of 379 is 189 either side
# of a cell's centre, and the upsampling kernels carry a cell up to 31 (32s) or 39 (16s, 8s:
# upscore2's reach at stride 16 adds to upscore16's) pixels farther.


class GoogLeNetFCN(FCNBase):
    """The shared GoogLeNet trunk and ``score_fr`` on inception5b.

    The paper's network: "we use only the final loss layer, and improve performance by
    discarding the final average pooling layer". The dropout before the classifier goes
    with it. Subclasses add the skips and the upsampling.
    """

    backbone = "googlenet"
    # Every BatchNorm (the convolutions have no bias, the norms carry weight and bias).
    trunk_layers = (
        "conv1.bn",
        "conv2.bn",
        "conv3.bn",
        *(
            f"{name}.{branch}.bn"
            for name, *_ in INCEPTIONS
            for branch in ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1")
        ),
        *(f"{name}.branch4.1.bn" for name, *_ in INCEPTIONS),
    )

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__(num_classes, width, learn_upsampling)
        self.conv1 = BasicConv2d(3, scaled(64, width), 7, stride=2, padding=CONV1_PAD)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(scaled(64, width), scaled(64, width), 1)
        self.conv3 = BasicConv2d(scaled(64, width), scaled(192, width), 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = scaled(192, width)
        self.channels: dict[str, int] = {}
        for name, *branches in INCEPTIONS:
            c1, c3r, c3, c5r, c5, pool = (scaled(c, width) for c in branches)
            block = Inception(channels, (c1, c3r, c3, c5r, c5, pool))
            self.add_module(name, block)
            channels = self.channels[name] = block.channels_out
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.score_fr = nn.Conv2d(channels, num_classes, kernel_size=1)

    def trunk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (inception3b, inception4e, inception5b): strides 8, 16 and 32."""
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        outputs: dict[str, Tensor] = {}
        for name, *_ in INCEPTIONS:
            if name == "inception4a":
                x = self.maxpool3(x)
            elif name == "inception5a":
                x = self.maxpool4(x)
            x = outputs[name] = getattr(self, name)(x)
        return outputs[INCEPTION3B], outputs[INCEPTION4E], outputs[INCEPTION5B]

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class GoogLeNetFCN32s(GoogLeNetFCN):
    """score_fr upsampled 32x (k63 s32), cropped onto the input."""

    arch = "fcn32s"
    upsampling_layers = ("upscore",)
    context = 220

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__(num_classes, width, learn_upsampling)
        self.upscore = self._upsampling(63, 32)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        _, _, inception5b = self.trunk(x)
        return crop(self.upscore(self.score_fr(inception5b)), CROP_32S, x)


class GoogLeNetFCN16s(GoogLeNetFCN):
    """score_fr upsampled 2x (k4 s2) plus score_inception4e, then 16x (k31 s16)."""

    arch = "fcn16s"
    upsampling_layers = ("upscore2", "upscore16")
    skip_layers = ("score_inception4e",)
    context = 228

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__(num_classes, width, learn_upsampling)
        self.score_inception4e = nn.Conv2d(self.channels[INCEPTION4E], num_classes, 1)
        self.upscore2 = self._upsampling(4, 2)
        self.upscore16 = self._upsampling(31, 16)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        _, inception4e, inception5b = self.trunk(x)
        score4 = self.score_inception4e(inception4e)
        # upscore2 is 2 or 3 cells longer than inception4e's map: crop it, not the skip.
        fuse4 = crop(self.upscore2(self.score_fr(inception5b)), CROP_UPSCORE2, score4) + score4
        return crop(self.upscore16(fuse4), CROP_FINAL, x)


class GoogLeNetFCN8s(GoogLeNetFCN):
    """As FCN-16s to the stride-16 fusion, then 2x (k3 s2) plus score_inception3b and 8x
    (k15 s8)."""

    arch = "fcn8s"
    upsampling_layers = ("upscore2", "upscore_inception4e", "upscore8")
    skip_layers = ("score_inception4e", "score_inception3b")
    context = 228

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__(num_classes, width, learn_upsampling)
        self.score_inception4e = nn.Conv2d(self.channels[INCEPTION4E], num_classes, 1)
        self.score_inception3b = nn.Conv2d(self.channels[INCEPTION3B], num_classes, 1)
        self.upscore2 = self._upsampling(4, 2)
        self.upscore_inception4e = self._upsampling(3, 2)
        self.upscore8 = self._upsampling(15, 8)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        inception3b, inception4e, inception5b = self.trunk(x)
        score4 = self.score_inception4e(inception4e)
        fuse4 = crop(self.upscore2(self.score_fr(inception5b)), CROP_UPSCORE2, score4) + score4
        score3 = self.score_inception3b(inception3b)
        # On the same grid from cell 0; the upsampled map is as long or one cell longer.
        fuse3 = crop(self.upscore_inception4e(fuse4), 0, score3) + score3
        return crop(self.upscore8(fuse3), CROP_FINAL, x)


NETWORKS: dict[str, type[FCNBase]] = {
    cls.arch: cls for cls in (GoogLeNetFCN32s, GoogLeNetFCN16s, GoogLeNetFCN8s)
}

# Keys of torchvision's GoogLeNet that the FCN has no place for: the auxiliary classifiers
# (on inception4a and 4d, used only in ImageNet training) and the classifier, replaced by
# score_fr. ``num_batches_tracked`` counts updates the frozen statistics never get.
DROPPED_PREFIXES = ("aux1.", "aux2.", "fc.")
DROPPED_SUFFIX = ".num_batches_tracked"


def torchvision_googlenet_state_dict(source: str | Path = "imagenet") -> dict[str, Tensor]:
    """torchvision's GoogLeNet state dict: ``"imagenet"`` downloads
    ``GoogLeNet_Weights.IMAGENET1K_V1`` (cached by torch.hub); anything else is the path of a
    saved state dict."""
    if str(source) == "imagenet":
        from torchvision.models import GoogLeNet_Weights

        return dict(GoogLeNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True))
    return read_state_dict(Path(source), "GoogLeNet")


def load_googlenet(net: GoogLeNetFCN, state_dict: Mapping[str, Tensor]) -> Preprocessing:
    """Copy torchvision GoogLeNet weights into ``net``'s trunk by name, the classifier and
    auxiliary heads dropped, and zero the score layers.

    Returns the preprocessing torchvision's ImageNet weights expect (``GOOGLENET``: what
    ``transform_input`` gives them). Any trunk tensor missing or of another shape (weights
    of another width, or not GoogLeNet's) raises WeightsError naming it.
    """
    own = {
        name: tensor
        for name, tensor in net.state_dict().items()
        if not name.split(".")[0].startswith(("score", "upscore"))
    }
    missing = [name for name in own if name not in state_dict]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise WeightsError(
            f"not a torchvision GoogLeNet state dict: missing {', '.join(missing[:4])}{more}"
        )
    unexpected = [
        name
        for name in state_dict
        if name not in own
        and not name.startswith(DROPPED_PREFIXES)
        and not name.endswith(DROPPED_SUFFIX)
    ]
    if unexpected:
        raise WeightsError(
            f"not a torchvision GoogLeNet state dict: unexpected {', '.join(unexpected[:4])}"
        )
    for name, tensor in own.items():
        value = state_dict[name]
        if tensor.shape != value.shape:
            raise WeightsError(
                f"{name}: network expects {tuple(tensor.shape)}, weights have "
                f"{tuple(value.shape)} (a width multiplier other than the weights'?)"
            )
        with torch.no_grad():
            tensor.copy_(value)
    for name in ("score_fr", *net.skip_layers):
        layer = getattr(net, name)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return GOOGLENET
