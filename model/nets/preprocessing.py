"""Input normalisation that belongs to a backbone's weights, as data and as a module.

Training, evaluation and the exported ONNX graph all normalise through ``Normalize``, so
a checkpoint's recorded preprocessing is applied the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

ChannelOrder = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class Preprocessing:
    """``(pixel * scale - mean) / std`` per channel, channels in ``channel_order``.

    ``mean`` and ``std`` are listed in ``channel_order``, in the units after ``scale``.
    """

    name: str
    channel_order: ChannelOrder
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channel_order": self.channel_order,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        order = str(data["channel_order"]).upper()
        if order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {order!r}")
        mean = tuple(float(v) for v in data["mean"])
        std = tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need three values each")
        return cls(
            name=str(data.get("name", "custom")),
            channel_order="RGB" if order == "RGB" else "BGR",
            scale=float(data["scale"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    @property
    def mean_rgb_255(self) -> tuple[int, int, int]:
        """The mean colour as RGB pixel values: the neutral fill for padded images."""
        mean = [m / self.scale for m in self.mean]
        if self.channel_order == "BGR":
            mean.reverse()
        r, g, b = (min(255, max(0, round(m))) for m in mean)
        return r, g, b


# torchvision's ImageNet backbones (VGG16, the ResNets of its FCNs): RGB in [0, 1], ImageNet
# mean and std.
TORCHVISION = Preprocessing(
    name="torchvision",
    channel_order="RGB",
    scale=1 / 255,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
# Caffe's ILSVRC VGG16 and the reference FCN weights: BGR in [0, 255] minus the mean.
CAFFE = Preprocessing(
    name="caffe",
    channel_order="BGR",
    scale=1.0,
    mean=(104.00699, 116.66877, 122.67892),
    std=(1.0, 1.0, 1.0),
)


class Normalize(nn.Module):
    """RGB pixels [N, 3, H, W] in 0..255 (uint8 or float) -> the network's float input."""

    weight: Tensor
    bias: Tensor

    def __init__(self, preprocessing: Preprocessing):
        super().__init__()
        self.preprocessing = preprocessing
        self.bgr = preprocessing.channel_order == "BGR"
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        # One multiply-add: x * (scale / std) - mean / std, shaped [1, 3, 1, 1].
        self.register_buffer(
            "weight", (preprocessing.scale / std).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("bias", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        x = image.to(self.weight.dtype)
        if self.bgr:
            x = x.flip(1)
        return x * self.weight + self.bias
