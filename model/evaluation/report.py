"""An evaluation's report: the four metrics on one line, the per-class table, the confusion
matrix as a PNG, and metrics.json (with the calibration, when measured)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.data.datasets import SegmentationDataset
from model.evaluation.calibration import CalibrationReport
from model.evaluation.metrics import SegmentationMetrics, json_safe
from model.files import atomic_path

# The confusion plot: past this many classes, names label every k-th row and column only,
# and the figure stops growing (a 150-class set would otherwise be a 70-inch image).
MAX_TICKS = 60
MAX_FIGURE_INCHES = 30.0


@dataclass
class Evaluation:
    """What ``fcn eval`` measured: the figures, the confusion matrix and the loss."""

    metrics: SegmentationMetrics
    confusion: Tensor  # [C, C] int64, rows = truth
    classes: list[str]
    images: int
    # The loss as the reference's score.py reports it (``LossMeter``), in the checkpoint's
    # training loss; None where no logits are at hand (an ONNX model, tiles).
    loss: float | None = None
    loss_mode: str = "sum"
    # SIFT Flow's geometric accuracy of a two-head net (``model.evaluation.geometry``).
    geometric_accuracy: float | None = None
    # None where the model gives no confidence (an ONNX file exported without it).
    calibration: CalibrationReport | None = None


def class_table(metrics: SegmentationMetrics, classes: list[str], confusion: Tensor) -> str:
    """Per-class IoU, accuracy and ground-truth pixels as an aligned text table."""
    pixels = confusion.sum(1).tolist()
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'pixels':>12}"]
    for name, iu, acc, n in zip(
        classes, metrics.class_iu, metrics.class_accuracy, pixels, strict=True
    ):
        iu_text = "-" if math.isnan(iu) else f"{100 * iu:6.2f}%"
        acc_text = "-" if math.isnan(acc) else f"{100 * acc:6.2f}%"
        lines.append(f"{name:<{width}}  {iu_text:>7}  {acc_text:>7}  {n:>12,}")
    return "\n".join(lines)


def plot_confusion(confusion: Tensor, classes: list[str], path: Path) -> Path:
    """The row-normalised confusion matrix (truth rows, prediction columns) as a PNG."""
    from matplotlib.figure import Figure

    counts = confusion.to(torch.float64).cpu().numpy()
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(classes)
    size = min(max(4.0, 0.45 * n + 2), MAX_FIGURE_INCHES)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.add_subplot()
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = range(0, n, math.ceil(n / MAX_TICKS))  # every class up to MAX_TICKS of them
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90)
    ax.set_yticks(ticks, [classes[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion (share of each true class)")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if share[i, j] >= 0.005:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{share[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    fig.colorbar(shown, ax=ax, shrink=0.8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def format_summary(metrics: SegmentationMetrics) -> str:
    """The four metrics on one line, in percent, as the paper's tables give them."""
    return (
        f"pixel acc {100 * metrics.pixel_accuracy:.2f}  "
        f"mean acc {100 * metrics.mean_accuracy:.2f}  "
        f"mean IU {100 * metrics.mean_iu:.2f}  f.w. IU {100 * metrics.frequency_weighted_iu:.2f}"
    )


def write_metrics(
    result: Evaluation, checkpoint: Path, dataset: SegmentationDataset, path: Path
) -> Path:
    """``metrics.json``: the figures, per-class IoU and accuracy, and the confusion matrix
    of ``result``, with the model and data they came from."""
    record: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": dataset.describe(),
        "images": result.images,
        **result.metrics.summary(),
        "loss": result.loss,
        "loss_mode": result.loss_mode,
        **(
            {}
            if result.geometric_accuracy is None
            else {"geometric_accuracy": result.geometric_accuracy}
        ),
        "classes": result.classes,
        "class_iu": result.metrics.class_iu,
        "class_accuracy": result.metrics.class_accuracy,
        "confusion": result.confusion.tolist(),
    }
    if result.calibration is not None:
        record["calibration"] = result.calibration.to_dict()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(record), indent=2) + "\n")
    return path
