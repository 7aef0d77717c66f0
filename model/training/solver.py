"""The paper's solver: two parameter groups (weights, biases), SGD or AdamW over them, the
pixel-wise loss (optionally class-weighted, optionally over a sample of the final layer's
cells), and the learning-rate policy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.palette import IGNORE_INDEX

POLY_POWER = 0.9


def parameter_groups(
    net: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float
) -> list[dict[str, Any]]:
    """The reference's two groups: weights (decayed, lr) and biases (no decay, lr x 2).

    Frozen parameters (the bilinear upsampling, unless learned) are left out entirely.
    """
    weights = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": biases, "lr": lr * bias_lr_mult, "lr_mult": bias_lr_mult, "weight_decay": 0.0},
    ]


def make_optimizer(
    net: nn.Module,
    name: str,
    lr: float,
    *,
    momentum: float,
    weight_decay: float,
    bias_lr_mult: float,
) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), or AdamW with the same two parameter groups."""
    groups = parameter_groups(net, lr, weight_decay, bias_lr_mult)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


# The cells loss sampling keeps or drops: those of the stride-32 score map (section 4.3).
SAMPLE_CELL = 32


def segmentation_loss(
    logits: Tensor, target: Tensor, mode: str, *, weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy over pixels, 255 ignored.

    ``sum`` (the reference): summed over each image's pixels and averaged over the images,
    as Caffe's SoftmaxWithLoss with ``normalize: false`` (normalisation by batch size), so
    the reference learning rates hold at any batch size. ``mean``: averaged over the
    labelled pixels of the batch. A batch with no pixel labelled gives 0. ``weight`` [C]
    scales each pixel's term by its true class's weight (``class_weights``).
    """
    if weight is not None:
        weight = weight.to(logits.device, torch.float32)
    total = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if mode == "sum":
        return total / target.shape[0]
    labelled = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / labelled


def sample_cells(target: Tensor, keep: float, cell: int = SAMPLE_CELL) -> Tensor:
    """Loss sampling (section 4.3, "patchwise training is loss sampling"): ``target`` with
    every pixel of each dropped cell set to 255 (ignored). Each cell of the final layer's
    stride-``cell`` grid is kept with probability ``keep``: a Bernoulli mask at the coarse
    resolution, upsampled nearest to pixels. Draws from the global torch RNG (CPU), which
    checkpoints carry, so a resumed run draws the same masks; ``keep`` 1 draws nothing."""
    if keep >= 1:
        return target
    n, height, width = target.shape
    coarse = torch.rand(n, -(-height // cell), -(-width // cell)) < keep  # [N, h/32, w/32]
    mask = coarse.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :height, :width]
    return target.masked_fill(~mask.to(target.device), IGNORE_INDEX)


def class_frequency_weights(counts: Tensor) -> Tensor:
    """Inverse-frequency class weights from per-class pixel ``counts`` [C] (255 excluded):
    w_c proportional to 1 / n_c, scaled so that the average weight over the training pixels
    is 1 (the loss keeps its scale, and so does the learning rate). A class with no pixel
    gets 0: it never appears in a target, so its weight is never used."""
    counts = counts.to(torch.float64)
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("class weights: the training labels have no labelled pixel")
    weights = torch.zeros_like(counts)
    # sum_c n_c w_c = total: each present class gets total / (K n_c), K present classes.
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def learning_rate_at(base: float, policy: str, iteration: int, max_iter: int) -> float:
    """``fixed``: ``base``; ``poly``: base x (1 - iteration / max_iter) ** 0.9."""
    if policy == "poly":
        return base * float((1 - min(iteration, max_iter) / max_iter) ** POLY_POWER)
    return base
