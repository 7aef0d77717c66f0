"""torchvision's FCN-ResNet50 and FCN-ResNet101 (a dilated ResNet of output stride 8, an FCN
head, bilinear upsampling to the input size) as a logits network like ours, with torchvision's
published weights read from their ``.pth`` file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from contract.tiling import Tiling
from model.nets.backbones import WeightsError, read_state_dict

TorchvisionFCNName = Literal["fcn_resnet50", "fcn_resnet101"]
NAMES: tuple[TorchvisionFCNName, ...] = ("fcn_resnet50", "fcn_resnet101")
# The published weights' classes: VOC's 20 and background (trained on COCO's VOC subset).
NUM_CLASSES = 21
# layer3 and layer4 dilate instead of striding: one logit per 8 x 8 pixels before upsampling.
OUTPUT_STRIDE = 8
# Pixels on either side that a label depends on. Measured by perturbation: random float64
# weights, one input row changed at each of the 8 phases of the stride-8 grid, each image run
# alone (batched, bilinear upsampling differs by 1e-16 everywhere), the farthest logit row
# that changed at all (tests/model/nets/test_torchvision_fcn.py). It equals the bound by
# index arithmetic: a stride-8 cell of the trunk plus the head's 3x3 sees 221 (ResNet101: 493)
# pixels either side, and bilinear upsampling carries a cell to output rows up to 11 past it.
# Tiles are never exact for these nets: upsampling to the input size stretches the grid by
# ceil(H / 8) * 8 / H, so labels near seams differ slightly whatever the overlap.
CONTEXT: dict[TorchvisionFCNName, int] = {"fcn_resnet50": 232, "fcn_resnet101": 504}
# Keys of the auxiliary head (on layer3) that the published files carry; inference drops it.
AUX_PREFIX = "aux_classifier."


class TorchvisionFCN(nn.Module):
    """torchvision's ``FCN`` as our networks are called: a normalised float image
    [N, 3, H, W] -> logits [N, C, H, W]."""

    def __init__(self, model: nn.Module, name: TorchvisionFCNName, num_classes: int):
        super().__init__()
        self.model = model
        self.name = name
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)["out"]
        return logits


def build_torchvision_fcn(name: TorchvisionFCNName) -> TorchvisionFCN:
    """torchvision's ``name`` without its auxiliary head, randomly initialised (no download)."""
    from torchvision.models import segmentation

    if name not in NAMES:
        raise ValueError(f"unknown torchvision FCN {name!r}; choose one of {', '.join(NAMES)}")
    build = getattr(segmentation, name)
    model = build(weights=None, weights_backbone=None, aux_loss=False, num_classes=NUM_CLASSES)
    return TorchvisionFCN(model, name, NUM_CLASSES)


def load_torchvision_weights(net: TorchvisionFCN, path: Path) -> None:
    """Load a torchvision ``.pth`` state dict into ``net``: the auxiliary head's keys are
    dropped, every other name and shape must match (WeightsError names the file)."""
    state = {
        key: value
        for key, value in read_state_dict(path, "torchvision FCN").items()
        if not key.startswith(AUX_PREFIX)
    }
    misfit = weights_misfit(net.model, state)
    if misfit:
        raise WeightsError(f"{path}: weights do not fit torchvision's {net.name}: {misfit}")
    net.model.load_state_dict(state, strict=True)


def weights_misfit(model: nn.Module, state_dict: Mapping[str, Tensor]) -> str:
    """Why ``state_dict`` cannot load into ``model`` (names and shapes), or ""."""
    wanted = {name: list(t.shape) for name, t in model.state_dict().items()}
    found = {
        name: list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        for name, value in state_dict.items()
    }
    problems = []
    missing = [name for name in wanted if name not in found]
    unexpected = [name for name in found if name not in wanted]
    for label, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            problems.append(f"{label} {', '.join(names[:4])}{more}")
    problems += [
        f"{name} is {found[name]}, not {shape}"
        for name, shape in wanted.items()
        if name in found and found[name] != shape
    ][:4]
    return "; ".join(problems)


def torchvision_tiling(name: TorchvisionFCNName) -> Tiling:
    """How the input of ``name`` may be cut into tiles (``contract.tiling``)."""
    return Tiling(OUTPUT_STRIDE, CONTEXT[name])
