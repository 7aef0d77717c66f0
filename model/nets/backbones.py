"""VGG16 weights into FCNs: ImageNet transfer by surgery, and staged initialisation.

The ImageNet classifier's fc6/fc7 (Linear layers over a flattened 512x7x7 pool5) become
7x7 and 1x1 convolutions; a later FCN stage starts from the previous one by name, with
its new skip score layers at zero so it begins from its parent's predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from model.errors import FCNError
from model.nets.base import FCNBase
from model.nets.fcn import VGG16_LAYERS, VGG16FCN
from model.nets.preprocessing import TORCHVISION, Preprocessing

# torchvision's vgg16 numbers its convolutions by position in ``features``.
TORCHVISION_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES = tuple(layer[0] for layer in VGG16_LAYERS if layer is not None)


class WeightsError(FCNError, ValueError):
    """Weights that do not fit the network they are loaded into."""


def torchvision_vgg16_state_dict(source: str | Path = "imagenet") -> dict[str, Tensor]:
    """torchvision's VGG16 state dict: ``"imagenet"`` downloads ``VGG16_Weights.IMAGENET1K_V1``
    (cached by torch.hub); anything else is the path of a saved state dict."""
    if str(source) == "imagenet":
        from torchvision.models import VGG16_Weights

        return dict(VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True))
    return read_state_dict(Path(source), "VGG16")


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A state dict saved by ``torch.save`` (or a dict holding one under ``"state_dict"``),
    read weights-only; WeightsError names the file, calling it ``what`` weights."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such {what} weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable torch state dict ({exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def copy_weights(param: Tensor, value: Tensor, name: str) -> None:
    if param.shape != value.shape:
        raise WeightsError(
            f"{name}: network expects {tuple(param.shape)}, weights have {tuple(value.shape)}"
        )
    with torch.no_grad():
        param.copy_(value)


def load_vgg16(net: VGG16FCN, state_dict: Mapping[str, Tensor]) -> Preprocessing:
    """Copy torchvision VGG16 weights into ``net``'s trunk, fc6 and fc7.

    Returns the preprocessing those weights expect. Score layers are left at zero.
    """
    missing = [
        f"{prefix}.{i}.{kind}"
        for prefix, indices in (("features", TORCHVISION_FEATURE_INDEX), ("classifier", (0, 3)))
        for i in indices
        for kind in ("weight", "bias")
        if f"{prefix}.{i}.{kind}" not in state_dict
    ]
    if missing:
        raise WeightsError(f"not a torchvision VGG16 state dict: missing {', '.join(missing[:4])}")
    for name, index in zip(CONV_NAMES, TORCHVISION_FEATURE_INDEX, strict=True):
        conv = getattr(net, name)
        copy_weights(conv.weight, state_dict[f"features.{index}.weight"], name)
        copy_weights(conv.bias, state_dict[f"features.{index}.bias"], name)
    # classifier.0 is Linear(512*7*7, 4096) on pool5 flattened channel-major, so its
    # weight rows reshape to 7x7 kernels without any transposition.
    for fc, index in ((net.fc6, 0), (net.fc7, 3)):
        weight = state_dict[f"classifier.{index}.weight"]
        if weight.numel() != fc.weight.numel():
            raise WeightsError(
                f"classifier.{index}: {tuple(weight.shape)} cannot become "
                f"{tuple(fc.weight.shape)} (a width multiplier other than the weights')"
            )
        copy_weights(fc.weight, weight.reshape(fc.weight.shape), f"classifier.{index}")
        assert fc.bias is not None
        copy_weights(fc.bias, state_dict[f"classifier.{index}.bias"], f"classifier.{index}")
    zero_score_layers(net)
    return TORCHVISION


def zero_score_layers(net: FCNBase) -> None:
    """Set score_fr and the skip score layers (of every head) to zero, as the reference's
    solvers do."""
    for name in net.score_layers:
        layer = getattr(net, name)
        assert isinstance(layer, nn.Conv2d)
        assert layer.bias is not None
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def init_from_parent(child: FCNBase, parent_state: Mapping[str, Tensor]) -> list[str]:
    """Staged training: copy every tensor the parent shares with ``child`` by name and shape.

    The child's own skip layers stay at zero so it starts from its parent's scores. Returns
    the names that were copied; raises if the trunk or score_fr did not match.
    """
    own = child.state_dict()
    copied: list[str] = []
    for name, value in parent_state.items():
        if name in own and own[name].shape == value.shape:
            with torch.no_grad():
                own[name].copy_(value)
            copied.append(name)
    required = [f"{n}.{k}" for n in (*child.trunk_layers, "score_fr") for k in ("weight", "bias")]
    missing = [n for n in required if n not in copied]
    if missing:
        raise WeightsError(
            f"parent weights do not fit {child.arch} (width {child.width}, "
            f"{child.num_classes} classes): {', '.join(missing[:4])} missing or of another shape"
        )
    for name in child.score_layers:
        if f"{name}.weight" not in copied:
            zero = getattr(child, name)
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)
    return copied
