"""How far a model's confidence can be trusted: the contract's ``confidence`` computed in
PyTorch, and its calibration on labelled pixels (expected calibration error over equal-width
bins, the reliability plot) with mean IU against coverage (the pixels at or above each level).

Everything is counted on the uint8 confidence the exported file outputs and the service
returns, so a threshold read off this report means the same there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contract.encode import confidence_limit
from contract.palette import IGNORE_INDEX
from contract.schema import CONFIDENCE_SCALE
from model.evaluation.metrics import metrics_from_confusion
from model.files import atomic_path

# Equal-width bins of the expected calibration error (Guo et al. 2017 use 15).
BINS = 15
# The confidence levels of the coverage table (probabilities): a pixel is kept at a level
# when its confidence is at or above it, by the service's ``?min_confidence=`` rule.
LEVELS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
VALUES = CONFIDENCE_SCALE + 1  # the uint8 confidence takes 0 ... 255


def confidence_of(logits: Tensor) -> Tensor:
    """The contract's ``confidence`` of logits [N, C, H, W]: the top class's softmax
    probability x 255 as uint8 [N, H, W], rounded half to even (torch.round and ONNX's Round
    alike). Computed in float32 whatever the logits' precision."""
    logits = logits.float()
    # The top probability is exp(0) / sum_c exp(l_c - max l): no division over C x H x W, and
    # no Softmax over axis 1, which ONNX Runtime's CPU provider runs 8x slower (transposing).
    total = (logits - logits.amax(1, keepdim=True)).exp().sum(1)  # [N, H, W], in [1, C]
    return (CONFIDENCE_SCALE / total).round().to(torch.uint8)


@dataclass(frozen=True)
class Bin:
    """One bin of the reliability diagram: confidences in [lower, upper)."""

    lower: float
    upper: float
    pixels: int
    confidence: float  # mean confidence of its pixels (NaN when empty)
    accuracy: float  # share of its pixels labelled right (NaN when empty)


@dataclass(frozen=True)
class Coverage:
    """The pixels whose confidence is at or above ``level``: their share and their scores."""

    level: float
    kept: float  # share of the labelled pixels
    mean_iu: float
    pixel_accuracy: float


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration over every labelled pixel of a data set."""

    pixels: int
    ece: float  # expected calibration error: sum over bins of share x |accuracy - confidence|
    confidence: float  # mean confidence
    accuracy: float  # pixel accuracy
    bins: tuple[Bin, ...]
    coverage: tuple[Coverage, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (``metrics.json``'s ``calibration``)."""
        return {
            "pixels": self.pixels,
            "bins": len(self.bins),
            "ece": self.ece,
            "mean_confidence": self.confidence,
            "pixel_accuracy": self.accuracy,
            "reliability": [vars(b) for b in self.bins],
            "coverage": [vars(c) for c in self.coverage],
        }

    def lines(self) -> list[str]:
        """The report as ``fcn eval`` prints it."""
        out = [
            f"calibration ({len(self.bins)} bins, {self.pixels:,} labelled pixels): "
            f"ECE {100 * self.ece:.2f}%, mean confidence {100 * self.confidence:.2f}%, "
            f"pixel accuracy {100 * self.accuracy:.2f}%",
            "coverage: the pixels at or above each confidence level",
            f"{'confidence >=':>13}  {'kept':>7}  {'mean IU':>7}  {'pixel acc':>9}",
        ]
        for row in self.coverage:
            iu = "-" if math.isnan(row.mean_iu) else f"{100 * row.mean_iu:6.2f}"
            acc = "-" if math.isnan(row.pixel_accuracy) else f"{100 * row.pixel_accuracy:6.2f}"
            out.append(f"{row.level:>13.2f}  {100 * row.kept:6.2f}%  {iu:>7}  {acc:>9}")
        return out


class Calibration:
    """Accumulates, over labelled pixels, the count and the correct count of each confidence
    value (0-255), and one confusion matrix per band between consecutive ``levels``."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        levels: Sequence[float] = LEVELS,
        device: torch.device | str = "cpu",
    ):
        if list(levels) != sorted(levels) or not levels or levels[0] != 0:
            raise ValueError(f"levels must rise from 0, got {list(levels)}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.levels = tuple(levels)
        self.limits = torch.tensor([confidence_limit(v) for v in levels], device=device)
        self.counts = torch.zeros(VALUES, dtype=torch.int64, device=device)
        self.correct = torch.zeros(VALUES, dtype=torch.int64, device=device)
        c = num_classes
        self.bands = torch.zeros(len(levels), c, c, dtype=torch.int64, device=device)

    def update(self, target: Tensor, labels: Tensor, confidence: Tensor) -> None:
        """Add a batch: ``target``, ``labels`` and ``confidence`` (uint8) maps of one shape;
        pixels whose target is ``ignore_index`` are left out (the confusion matrix, updated
        first, refuses ids outside the classes)."""
        device = self.counts.device
        target = target.reshape(-1).to(device, torch.int64)
        keep = target != self.ignore_index
        target = target[keep]
        labels = labels.reshape(-1).to(device, torch.int64)[keep]
        value = confidence.reshape(-1).to(device, torch.int64)[keep]
        self.counts += torch.bincount(value, minlength=VALUES)
        self.correct += torch.bincount(value[labels == target], minlength=VALUES)
        # Band k: levels[k] <= confidence < levels[k + 1], by the service's threshold rule.
        band = torch.bucketize(value, self.limits, right=True) - 1
        c = self.num_classes
        cells = (band * c + target) * c + labels
        self.bands += torch.bincount(cells, minlength=self.bands.numel()).view_as(self.bands)

    def compute(self, bins: int = BINS) -> CalibrationReport:
        """The figures of every pixel added so far."""
        counts = self.counts.cpu().double()
        correct = self.correct.cpu().double()
        values = torch.arange(VALUES, dtype=torch.float64) / CONFIDENCE_SCALE
        which = torch.clamp((values * bins).floor().long(), max=bins - 1)
        total = float(counts.sum())
        rows: list[Bin] = []
        ece = 0.0
        for b in range(bins):
            inside = which == b
            n = float(counts[inside].sum())
            mean = float((counts[inside] * values[inside]).sum()) / n if n else math.nan
            accuracy = float(correct[inside].sum()) / n if n else math.nan
            if n:
                ece += n / total * abs(accuracy - mean)
            rows.append(Bin(b / bins, (b + 1) / bins, int(n), mean, accuracy))
        coverage = []
        kept = self.bands.flip(0).cumsum(0).flip(0).cpu()  # [K, C, C]: at or above each level
        for level, matrix in zip(self.levels, kept, strict=True):
            scores = metrics_from_confusion(matrix)
            share = float(matrix.sum()) / total if total else math.nan
            coverage.append(Coverage(level, share, scores.mean_iu, scores.pixel_accuracy))
        return CalibrationReport(
            pixels=int(total),
            ece=ece if total else math.nan,
            confidence=float((counts * values).sum()) / total if total else math.nan,
            accuracy=float(correct.sum()) / total if total else math.nan,
            bins=tuple(rows),
            coverage=tuple(coverage),
        )


def plot_reliability(report: CalibrationReport, path: Path) -> Path:
    """The reliability diagram as a PNG: each bin's accuracy against its confidence (a
    calibrated model sits on the diagonal), with the share of pixels in each bin below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = 1 / len(report.bins)
    lefts = [b.lower for b in report.bins]
    accuracy = [0.0 if math.isnan(b.accuracy) else b.accuracy for b in report.bins]
    confidence = [0.0 if math.isnan(b.confidence) else b.confidence for b in report.bins]
    top.bar(lefts, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    pairs = zip(confidence, accuracy, report.bins, strict=True)
    gaps = [c - a if b.pixels else 0.0 for c, a, b in pairs]
    top.bar(
        lefts, gaps, bottom=accuracy, width=width, align="edge", color="tab:red", alpha=0.3,
        label="gap to confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability (ECE {100 * report.ece:.2f}%)")
    top.legend(loc="upper left")
    shares = [b.pixels / max(1, report.pixels) for b in report.bins]
    bottom.bar(lefts, shares, width=width, align="edge", color="tab:gray", edgecolor="black")
    seen = [share for share in shares if share > 0]
    if seen:  # a trained model puts most pixels in the top bin: a log scale shows the rest
        bottom.set_yscale("log")
        bottom.set_ylim(min(seen) / 2, 1.5)
    bottom.set_xlabel("confidence (top class's probability)")
    bottom.set_ylabel("share of pixels")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
