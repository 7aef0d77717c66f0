"""The paper's Appendix A: how much mean IU a perfect prediction at a coarse stride could
score. The ground truth is taken down by a factor (one label per factor x factor block),
brought back up nearest, and scored against the full-resolution ground truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contract.palette import IGNORE_INDEX
from model.data.datasets import SegmentationDataset
from model.evaluation.metrics import ConfusionMatrix

FACTORS = (128, 64, 32, 16, 8, 4)
# Appendix A's table, mean IU (%) on a subset of PASCAL VOC 2011 segval.
PAPER_MEAN_IU = {128: 50.9, 64: 73.3, 32: 86.1, 16: 92.8, 8: 96.4, 4: 98.5}


def block_labels(target: Tensor, factor: int, num_classes: int) -> Tensor:
    """``target`` [H, W] with each factor x factor block (from the top left; the last ones
    cut) set to its most frequent labelled class (ties: the lowest id), or 255 where the
    block holds no labelled pixel: the ground truth downsampled, then upsampled nearest."""
    height, width = target.shape
    rows, cols = -(-height // factor), -(-width // factor)
    padded = F.pad(target.long(), (0, cols * factor - width, 0, rows * factor - height), value=-1)
    labelled = (padded >= 0) & (padded < num_classes)
    ids = torch.where(labelled, padded, torch.full_like(padded, num_classes))
    # [rows, factor, cols, factor] -> per block, the pixel count of each class (+ 1 for "none")
    blocks = ids.view(rows, factor, cols, factor).permute(0, 2, 1, 3).reshape(rows, cols, -1)
    counts = F.one_hot(blocks, num_classes + 1).sum(2)[..., :num_classes]  # [rows, cols, C]
    coarse = counts.argmax(-1)
    coarse[counts.sum(-1) == 0] = IGNORE_INDEX
    dense = coarse.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    return dense[:height, :width]


def upper_bounds(
    dataset: SegmentationDataset, factors: tuple[int, ...] = FACTORS
) -> dict[int, float]:
    """Mean IU of the block-downsampled ground truth, per factor, over ``dataset``."""
    confusions = {f: ConfusionMatrix(dataset.num_classes) for f in factors}
    for sample in dataset.samples:
        target = torch.from_numpy(dataset.read_target(sample.target).astype("int64"))
        for factor, confusion in confusions.items():
            confusion.update(target, block_labels(target, factor, dataset.num_classes))
    return {f: c.compute().mean_iu for f, c in confusions.items()}


def format_upper_bounds(bounds: dict[int, float]) -> str:
    """Our figure beside the paper's, one factor a line."""
    lines = [f"{'factor':>6}  {'mean IU':>8}  {'paper':>6}"]
    for factor, value in bounds.items():
        paper = PAPER_MEAN_IU.get(factor)
        lines.append(
            f"{factor:>6}  {100 * value:>7.1f}%  {'-' if paper is None else f'{paper:.1f}%':>6}"
        )
    return "\n".join(lines)
