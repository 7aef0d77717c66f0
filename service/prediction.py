"""What one run of the model gives each image: its per-pixel outputs by name (``labels``, and
``confidence`` and a two-head file's ``geometry`` where the model has them), and what the
answer cost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The model's per-pixel outputs by name, each [N, H, W]: labels, confidence, geometry.
Outputs = Mapping[str, NDArray[Any]]
# [N, H, W, 3] uint8 -> its outputs; blocking (the batcher runs it on its inference thread).
Predict = Callable[[NDArray[np.uint8]], Outputs]


@dataclass(frozen=True)
class Prediction:
    """One request's labels (H x W), what it cost, and its confidence and geometry (each
    H x W uint8) where the model has them."""

    labels: NDArray[Any]
    queue_s: float
    inference_s: float
    batch_size: int
    confidence: NDArray[np.uint8] | None = None
    geometry: NDArray[np.uint8] | None = None  # a two-head file's second labels
