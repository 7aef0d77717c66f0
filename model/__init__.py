"""FCN training package: networks, weights, data, training, evaluation and ONNX export.

The networks are imported on first use (``from model import build_fcn`` works as ever),
so that importing a light submodule, as ``fcn --help`` does, never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.nets.fcn import ARCHS, FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s, ModelSpec, build_fcn

__all__ = ["ARCHS", "FCN", "FCN8s", "FCN8sAtOnce", "FCN16s", "FCN32s", "ModelSpec", "build_fcn"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("model.nets.fcn"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
