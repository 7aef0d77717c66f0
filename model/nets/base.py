"""What every FCN is, whatever its ImageNet trunk: the spec that rebuilds it, its tiling, its
fillers, and ``build_fcn``, the one dispatch over (backbone, arch).

Each backbone's module holds a ``dict[str, type[FCNBase]]`` (arch -> class); the dispatch
imports it only when asked, so a broken or missing backbone module breaks that backbone only.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.tiling import Tiling
from model import names

# Every backbone's nets pool five times by two: labels sit on a stride-32 grid.
OUTPUT_STRIDE = 32

# backbone -> (module, attribute) of its arch -> class table, imported on first use.
REGISTRY: dict[str, tuple[str, str]] = {
    "vgg16": ("model.nets.fcn", "NETWORKS"),
    "alexnet": ("model.nets.alexnet", "TORCHVISION_NETWORKS"),
    "caffe-alexnet": ("model.nets.alexnet", "CAFFE_NETWORKS"),
    "googlenet": ("model.nets.googlenet", "NETWORKS"),
}
assert tuple(REGISTRY) == names.BACKBONES


# fc6 and fc7 of the ImageNet classifiers (VGG16, AlexNet), at width 1.0.
FC_CHANNELS = 4096
# A second head's layers are the first head's names with this suffix (SIFT Flow's geometric
# head: ``score_fr_geo``, ``upscore2_geo``, ...); the first head keeps the plain names.
GEOMETRY_SUFFIX = "_geo"


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer under the width multiplier (at least 1)."""
    return max(1, round(channels * width))


def bilinear_kernel(size: int) -> Tensor:
    """The reference's 2-D bilinear upsampling kernel (``surgery.upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(ramp, ramp).float()


def fill_bilinear(weight: Tensor) -> None:
    """Initialise a transposed-conv weight [C, C, k, k] to per-channel bilinear interpolation."""
    channels_in, channels_out, kh, kw = weight.shape
    if channels_in != channels_out or kh != kw:
        raise ValueError(
            f"bilinear init needs a square [C, C, k, k] weight, got {tuple(weight.shape)}"
        )
    with torch.no_grad():
        weight.zero_()
        kernel = bilinear_kernel(kh).to(weight.device, weight.dtype)
        for c in range(channels_in):
            weight[c, c] = kernel


def crop(x: Tensor, offset: int, like: Tensor) -> Tensor:
    """Caffe's Crop layer: ``x[..., off:off + H, off:off + W]`` with H, W taken from ``like``.

    The sizes come from the runtime shape of ``like`` so the slice stays symbolic when traced.
    """
    height, width = like.shape[-2], like.shape[-1]
    return x[:, :, offset : offset + height, offset : offset + width]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: recorded in checkpoints and ONNX metadata."""

    arch: str
    num_classes: int
    width: float = 1.0
    learn_upsampling: bool = False
    backbone: str = "vgg16"
    # Classes of a second, geometric head beside the semantic one (SIFT Flow's 3); 0: none.
    geometry_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.geometry_classes:  # one-head specs are recorded as they always were
            del data["geometry_classes"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            width=float(data.get("width", 1.0)),
            learn_upsampling=bool(data.get("learn_upsampling", False)),
            # Checkpoints from before there were other backbones are VGG16 ones.
            backbone=str(data.get("backbone", "vgg16")),
            geometry_classes=int(data.get("geometry_classes", 0)),
        )


class FCNBase(nn.Module):
    """An FCN on some ImageNet trunk. ``forward`` takes a preprocessed float image
    [N, 3, H, W] and returns logits [N, C, H, W] for any H, W >= 1.

    Subclasses name their layers as the reference does (so weights map by name) and set the
    class attributes below; ``_init_weights`` then gives them the reference's fillers.
    """

    arch: ClassVar[str]
    backbone: ClassVar[str]
    # The transposed convolutions, frozen unless ``learn_upsampling``.
    upsampling_layers: ClassVar[tuple[str, ...]]
    # Skip score layers that start at zero (besides score_fr).
    skip_layers: ClassVar[tuple[str, ...]] = ()
    # The layers that come from the ImageNet classifier (convolutions, fc6, fc7): what a
    # later stage must find in its parent, and what "train the score layers only" freezes.
    trunk_layers: ClassVar[tuple[str, ...]]
    # Pixels on either side that a label depends on, over every phase of the output grid
    # (measured by perturbation, tests/model/nets/test_receptive_field.py).
    context: ClassVar[int]
    output_stride: ClassVar[int] = OUTPUT_STRIDE
    # Whether the class takes ``geometry_classes`` (a second head); see ``head_suffixes``.
    supports_geometry: ClassVar[bool] = False

    def __init__(self, num_classes: int = 21, width: float = 1.0, learn_upsampling: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.num_classes = num_classes
        self.width = width
        self.learn_upsampling = learn_upsampling
        self.geometry_classes = 0

    @property
    def head_suffixes(self) -> tuple[str, ...]:
        """The suffix of each head's layer names: "" (semantic), and "_geo" with a second head."""
        return ("", GEOMETRY_SUFFIX) if self.geometry_classes else ("",)

    @property
    def score_layers(self) -> tuple[str, ...]:
        """``score_fr`` and the skips' score layers of every head: the layers that start at
        zero and that ``--score-only`` trains."""
        return tuple(
            f"{name}{suffix}"
            for suffix in self.head_suffixes
            for name in ("score_fr", *self.skip_layers)
        )

    def _init_weights(self) -> None:
        """Kaiming for the trunk (used when no pretrained weights are loaded), zero scores,
        bilinear upsampling (the reference's fillers). Subclasses call it last in __init__."""
        for name, module in self.named_modules():
            if not name:
                continue
            if name.removesuffix(GEOMETRY_SUFFIX) in self.upsampling_layers:
                assert isinstance(module, nn.ConvTranspose2d)
                fill_bilinear(module.weight)
                module.weight.requires_grad_(self.learn_upsampling)
            elif name.split(".")[-1].startswith("score"):
                assert isinstance(module, nn.Conv2d)
                nn.init.zeros_(module.weight)
                assert module.bias is not None
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def tiling(self) -> Tiling:
        """How this network's input may be cut into tiles (``contract.tiling``)."""
        return Tiling(self.output_stride, self.context)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.arch,
            self.num_classes,
            self.width,
            self.learn_upsampling,
            self.backbone,
            self.geometry_classes,
        )

    def _add_classifier(self, channels: int, kernel_size: int) -> None:
        """fc6 (the ImageNet classifier's first Linear as a ``kernel_size`` convolution over
        ``channels``), fc7 (1x1), each followed by ReLU and dropout 0.5, then ``score_fr``:
        the head that VGG16 and AlexNet share."""
        fc = scaled(FC_CHANNELS, self.width)
        self.fc6 = nn.Conv2d(channels, fc, kernel_size=kernel_size)
        self.fc7 = nn.Conv2d(fc, fc, kernel_size=1)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc, self.num_classes, kernel_size=1)

    def _fc7(self, features: Tensor) -> Tensor:
        """fc6 and fc7 of ``_add_classifier`` on the trunk's last ``features``."""
        h = self.drop6(F.relu(self.fc6(features), inplace=True))
        return self.drop7(F.relu(self.fc7(h), inplace=True))  # type: ignore[no-any-return]

    def _classify(self, features: Tensor) -> Tensor:
        """The scores of ``_add_classifier``'s head on the trunk's last ``features``."""
        return self.score_fr(self._fc7(features))  # type: ignore[no-any-return]

    def _upsampling(
        self, kernel_size: int, stride: int, classes: int | None = None
    ) -> nn.ConvTranspose2d:
        c = self.num_classes if classes is None else classes
        return nn.ConvTranspose2d(c, c, kernel_size, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def networks(backbone: str) -> dict[str, type[FCNBase]]:
    """The arch -> class table of ``backbone``, its module imported now."""
    try:
        module_name, attribute = REGISTRY[backbone]
    except KeyError:
        raise ValueError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(REGISTRY)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
        table: dict[str, type[FCNBase]] = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"backbone {backbone!r} is unavailable: {module_name}.{attribute} ({exc})"
        ) from exc
    return table


def valid_pairs() -> str:
    """Every (backbone, arch) that builds, for error messages; broken backbones skipped."""
    offered = []
    for backbone in REGISTRY:
        try:
            offered.append(f"{backbone}: {', '.join(networks(backbone))}")
        except ValueError:
            continue
    return "; ".join(offered)


def network_class(backbone: str, arch: str) -> type[FCNBase]:
    """The class of FCN ``arch`` on ``backbone``; ValueError lists the pairs there are."""
    table = networks(backbone)
    if arch not in table:
        raise ValueError(
            f"no architecture {arch!r} on backbone {backbone!r}; the networks are {valid_pairs()}"
        )
    return table[arch]


def network_tiling(arch: str, backbone: str = "vgg16") -> Tiling:
    """How the input of network ``arch`` on ``backbone`` may be cut into tiles."""
    cls = network_class(backbone, arch)
    return Tiling(cls.output_stride, cls.context)


def build_fcn(spec: ModelSpec) -> FCNBase:
    """Build the network that ``spec`` names, freshly initialised."""
    cls = network_class(spec.backbone, spec.arch)
    if not spec.geometry_classes:
        return cls(spec.num_classes, spec.width, spec.learn_upsampling)
    if not cls.supports_geometry:
        raise ValueError(
            f"{spec.arch} on {spec.backbone} has no geometric head; "
            "only the VGG16 nets (fcn32s, fcn16s, fcn8s) take one"
        )
    make: Any = cls  # the VGG16 classes' signature: mypy sees FCNBase's
    net: FCNBase = make(
        spec.num_classes,
        spec.width,
        spec.learn_upsampling,
        geometry_classes=spec.geometry_classes,
    )
    return net
