"""What one run of the model gives each image: its per-pixel maps by name (``labels``, and
``geometry`` when the file has it), and what the answer cost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The model's per-pixel maps by name, each [N, H, W]: labels, and a two-head file's geometry.
Outputs = Mapping[str, NDArray[Any]]
# [N, H, W, 3] uint8 -> [N, H, W] labels, or Outputs; blocking (runs on the inference thread).
Predict = Callable[[NDArray[np.uint8]], NDArray[Any] | Outputs]


@dataclass(frozen=True)
class Prediction:
    """One request's labels (H x W), what it cost, and its geometry (H x W uint8) if any."""

    labels: NDArray[Any]
    queue_s: float
    inference_s: float
    batch_size: int
    geometry: NDArray[np.uint8] | None = None
