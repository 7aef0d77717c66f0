"""The paper's four segmentation metrics from one confusion matrix over a whole data set.

With n_ij the pixels of class i predicted as j, t_i = sum_j n_ij and n_cl the classes:
pixel accuracy sum_i n_ii / sum_i t_i; mean accuracy (1/n_cl) sum_i n_ii / t_i; mean IU
(1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii); frequency-weighted IU
(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii). As in the reference's score.py,
a ratio that is 0/0 is left out of its mean: a class absent from the truth drops out of
mean accuracy, and one absent from both truth and prediction drops out of mean IU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from contract.palette import IGNORE_INDEX


@dataclass(frozen=True)
class SegmentationMetrics:
    pixel_accuracy: float
    mean_accuracy: float
    mean_iu: float
    frequency_weighted_iu: float
    # Per class; NaN where the ratio is 0/0 (the class is absent).
    class_accuracy: list[float]
    class_iu: list[float]

    def summary(self) -> dict[str, float]:
        """The four headline figures, as the paper's tables list them."""
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iu": self.mean_iu,
            "frequency_weighted_iu": self.frequency_weighted_iu,
        }


class ConfusionMatrix:
    """Accumulates n_ij (row: truth, column: prediction) on whatever device the labels are."""

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: Tensor, labels: Tensor) -> None:
        """Add a batch: ``target`` and ``labels`` are integer maps of the same shape.

        Pixels whose target is ``ignore_index`` are skipped; any other target or label
        outside [0, C) is an error rather than a silently skewed score.
        """
        if target.shape != labels.shape:
            raise ValueError(
                f"target {tuple(target.shape)} and labels {tuple(labels.shape)} differ"
            )
        c = self.num_classes
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        labels = labels.reshape(-1).to(self.matrix.device, torch.int64)
        keep = target != self.ignore_index
        target, labels = target[keep], labels[keep]
        if target.numel() == 0:
            return
        bad = (target < 0) | (target >= c) | (labels < 0) | (labels >= c)
        if bool(bad.any()):
            found = torch.cat([target[bad], labels[bad]])
            raise ValueError(
                f"values outside [0, {c}) besides {self.ignore_index}: "
                f"{sorted(set(found.tolist()))[:5]}"
            )
        self.matrix += torch.bincount(c * target + labels, minlength=c * c).view(c, c)

    def all_reduce(self) -> None:
        """Sum the matrices of every rank of a running process group (no-op otherwise)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.matrix)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (the figures of absent classes) as None, through
    lists and dicts: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def _nanmean(values: Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else math.nan


def metrics_from_confusion(matrix: Tensor) -> SegmentationMetrics:
    """The four metrics and per-class figures of a confusion matrix (truth rows)."""
    n = matrix.to(torch.float64).cpu()
    diag = n.diagonal()
    truth = n.sum(1)  # t_i
    predicted = n.sum(0)  # sum_j n_ji
    total = truth.sum()
    with torch.no_grad():
        accuracy = diag / truth  # 0/0 -> NaN for classes absent from the truth
        iu = diag / (truth + predicted - diag)  # 0/0 -> NaN when absent from both
    if total > 0:
        pixel_accuracy = float(diag.sum() / total)
        freq = truth / total
        seen = freq > 0
        fw_iu = float((freq[seen] * iu[seen]).sum())
    else:
        pixel_accuracy = fw_iu = math.nan
    return SegmentationMetrics(
        pixel_accuracy=pixel_accuracy,
        mean_accuracy=_nanmean(accuracy),
        mean_iu=_nanmean(iu),
        frequency_weighted_iu=fw_iu,
        class_accuracy=accuracy.tolist(),
        class_iu=iu.tolist(),
    )
