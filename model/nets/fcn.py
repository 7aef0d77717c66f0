"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on a VGG16 trunk.

Layer for layer the networks of the reference implementation
(shelhamer/fcn.berkeleyvision.org, ``voc-fcn*/net.py``): same names, same paddings,
same crop offsets, so weights map one to one by parameter name.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import names
from model.nets.base import (
    FC_CHANNELS,
    GEOMETRY_SUFFIX,
    OUTPUT_STRIDE,
    FCNBase,
    ModelSpec,
    bilinear_kernel,
    build_fcn,
    crop,
    fill_bilinear,
    network_tiling,
    scaled,
)

ARCHS = names.ARCHS
# The backbone-neutral base, under the name the rest of the code has always used.
FCN = FCNBase

# (name, channels at width 1.0) of the 13 VGG16 convolutions; None marks a 2x2 max pool.
VGG16_LAYERS: tuple[tuple[str, int] | None, ...] = (
    ("conv1_1", 64), ("conv1_2", 64), None,
    ("conv2_1", 128), ("conv2_2", 128), None,
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), None,
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), None,
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), None,
)  # fmt: skip
# conv1_1 pads by 100 so that even a 1x1 input leaves a non-empty map after pool5 and fc6.
CONV1_1_PAD = 100


class VGG16FCN(FCNBase):
    """The shared VGG16 trunk, fc6/fc7 as convolutions and ``score_fr``.

    Subclasses add the skips and the upsampling of a head (``_add_head``, ``_head``). With
    ``geometry_classes`` a second head, its layers named like the first's plus ``_geo``,
    scores the same fc7 and pools: the reference's SIFT Flow nets (``siftflow-fcn*/net.py``,
    whose ``*_sem`` layers are the first head's here).
    """

    backbone = "vgg16"
    trunk_layers = (*(layer[0] for layer in VGG16_LAYERS if layer is not None), "fc6", "fc7")
    supports_geometry = True

    def __init__(
        self,
        num_classes: int = 21,
        width: float = 1.0,
        learn_upsampling: bool = False,
        *,
        geometry_classes: int = 0,
    ):
        super().__init__(num_classes, width, learn_upsampling)
        if geometry_classes < 0 or geometry_classes == 1:
            raise ValueError(
                f"geometry_classes must be 0 (none) or at least 2, got {geometry_classes}"
            )
        self.geometry_classes = geometry_classes
        channels = 3
        for layer in VGG16_LAYERS:
            if layer is None:
                continue
            name, out = layer
            out = scaled(out, width)
            pad = CONV1_1_PAD if name == "conv1_1" else 1
            self.add_module(name, nn.Conv2d(channels, out, kernel_size=3, padding=pad))
            channels = out
        self._add_classifier(channels, kernel_size=7)
        self._add_head("", num_classes)
        if geometry_classes:
            fc = scaled(FC_CHANNELS, width)
            self.add_module(f"score_fr{GEOMETRY_SUFFIX}", nn.Conv2d(fc, geometry_classes, 1))
            self._add_head(GEOMETRY_SUFFIX, geometry_classes)
        self._init_weights()

    def trunk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (pool3, pool4, pool5)."""
        pools: list[Tensor] = []
        for layer in VGG16_LAYERS:
            if layer is None:
                # ceil_mode as in Caffe: floor pooling breaks the crop offsets for many sizes.
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
                pools.append(x)
            else:
                x = F.relu(getattr(self, layer[0])(x), inplace=True)
        return pools[2], pools[3], pools[4]

    def score(self, pool5: Tensor) -> Tensor:
        return self._classify(pool5)

    def _add_head(self, suffix: str, classes: int) -> None:
        """The skip score layers and upsampling of one head (``score_fr`` aside)."""
        raise NotImplementedError

    def _head(
        self, pools: tuple[Tensor, Tensor, Tensor], fc7: Tensor, x: Tensor, suffix: str
    ) -> Tensor:
        """One head's logits [N, C, H, W] from the trunk's pools and fc7, cropped to ``x``."""
        raise NotImplementedError

    def _layer(self, name: str, suffix: str) -> nn.Module:
        return getattr(self, name + suffix)  # type: ignore[no-any-return]

    @overload
    def forward(self, x: Tensor) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, geometry: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, geometry: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [N, C, H, W]; with ``geometry``, also the geometric head's [N, G, H, W]
        (one pass: a call through DDP keeps its gradient hooks)."""
        pools = self.trunk(x)
        fc7 = self._fc7(pools[2])
        logits = self._head(pools, fc7, x, "")
        if not geometry:
            return logits
        if not self.geometry_classes:
            raise ValueError(f"{self.arch} has no geometric head (geometry_classes 0)")
        return logits, self._head(pools, fc7, x, GEOMETRY_SUFFIX)


class FCN32s(VGG16FCN):
    """Single stream: score_fr upsampled 32x (k64 s32), cropped at 19."""

    arch = "fcn32s"
    upsampling_layers = ("upscore",)
    context = 234

    def _add_head(self, suffix: str, classes: int) -> None:
        self.add_module(f"upscore{suffix}", self._upsampling(64, 32, classes))

    def _head(
        self, pools: tuple[Tensor, Tensor, Tensor], fc7: Tensor, x: Tensor, suffix: str
    ) -> Tensor:
        score_fr = self._layer("score_fr", suffix)(fc7)
        return crop(self._layer("upscore", suffix)(score_fr), 19, x)


class FCN16s(VGG16FCN):
    """score_fr upsampled 2x plus score_pool4 (cropped at 5), then 16x (k32 s16), cropped at 27."""

    arch = "fcn16s"
    upsampling_layers = ("upscore2", "upscore16")
    context = 242
    skip_layers = ("score_pool4",)

    def _add_head(self, suffix: str, classes: int) -> None:
        width = self.width
        self.add_module(f"score_pool4{suffix}", nn.Conv2d(scaled(512, width), classes, 1))
        self.add_module(f"upscore2{suffix}", self._upsampling(4, 2, classes))
        self.add_module(f"upscore16{suffix}", self._upsampling(32, 16, classes))

    def _head(
        self, pools: tuple[Tensor, Tensor, Tensor], fc7: Tensor, x: Tensor, suffix: str
    ) -> Tensor:
        upscore2 = self._layer("upscore2", suffix)(self._layer("score_fr", suffix)(fc7))
        score_pool4 = self._layer("score_pool4", suffix)(pools[1])
        fuse_pool4 = upscore2 + crop(score_pool4, 5, upscore2)
        return crop(self._layer("upscore16", suffix)(fuse_pool4), 27, x)


class FCN8s(VGG16FCN):
    """Two skips: pool4 (cropped at 5) at stride 16 and pool3 (cropped at 9) at stride 8,
    then 8x (k16 s8), cropped at 31."""

    arch = "fcn8s"
    upsampling_layers = ("upscore2", "upscore_pool4", "upscore8")
    context = 246
    skip_layers = ("score_pool4", "score_pool3")

    def _add_head(self, suffix: str, classes: int) -> None:
        width = self.width
        self.add_module(f"score_pool4{suffix}", nn.Conv2d(scaled(512, width), classes, 1))
        self.add_module(f"score_pool3{suffix}", nn.Conv2d(scaled(256, width), classes, 1))
        self.add_module(f"upscore2{suffix}", self._upsampling(4, 2, classes))
        self.add_module(f"upscore_pool4{suffix}", self._upsampling(4, 2, classes))
        self.add_module(f"upscore8{suffix}", self._upsampling(16, 8, classes))

    def scale_pools(self, pool3: Tensor, pool4: Tensor) -> tuple[Tensor, Tensor]:
        """Identity here; the at-once variant scales both before scoring."""
        return pool3, pool4

    def _head(
        self, pools: tuple[Tensor, Tensor, Tensor], fc7: Tensor, x: Tensor, suffix: str
    ) -> Tensor:
        pool3, pool4 = self.scale_pools(pools[0], pools[1])
        upscore2 = self._layer("upscore2", suffix)(self._layer("score_fr", suffix)(fc7))
        score_pool4 = self._layer("score_pool4", suffix)(pool4)
        fuse_pool4 = upscore2 + crop(score_pool4, 5, upscore2)
        upscore_pool4 = self._layer("upscore_pool4", suffix)(fuse_pool4)
        score_pool3 = self._layer("score_pool3", suffix)(pool3)
        fuse_pool3 = upscore_pool4 + crop(score_pool3, 9, upscore_pool4)
        return crop(self._layer("upscore8", suffix)(fuse_pool3), 31, x)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring.

    The scales are Caffe ``Scale`` layers with ``lr_mult: 0``: fixed per-channel buffers
    named ``scale_pool4`` and ``scale_pool3`` so Caffe weights map onto them by name.
    """

    arch = "fcn8s-atonce"
    POOL4_SCALE = 0.01
    POOL3_SCALE = 0.0001

    scale_pool4: Tensor
    scale_pool3: Tensor

    def __init__(
        self,
        num_classes: int = 21,
        width: float = 1.0,
        learn_upsampling: bool = False,
        *,
        geometry_classes: int = 0,
    ):
        super().__init__(num_classes, width, learn_upsampling, geometry_classes=geometry_classes)
        self.register_buffer("scale_pool4", torch.full((scaled(512, width),), self.POOL4_SCALE))
        self.register_buffer("scale_pool3", torch.full((scaled(256, width),), self.POOL3_SCALE))

    def scale_pools(self, pool3: Tensor, pool4: Tensor) -> tuple[Tensor, Tensor]:
        return pool3 * self.scale_pool3[:, None, None], pool4 * self.scale_pool4[:, None, None]


NETWORKS: dict[str, type[FCNBase]] = {cls.arch: cls for cls in (FCN32s, FCN16s, FCN8s, FCN8sAtOnce)}

__all__ = [
    "ARCHS",
    "FCN",
    "NETWORKS",
    "OUTPUT_STRIDE",
    "VGG16FCN",
    "FCN8s",
    "FCN8sAtOnce",
    "FCN16s",
    "FCN32s",
    "FCNBase",
    "ModelSpec",
    "bilinear_kernel",
    "build_fcn",
    "crop",
    "fill_bilinear",
    "network_tiling",
    "scaled",
]
