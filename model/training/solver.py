"""The paper's solver: two parameter groups (weights, biases), SGD or AdamW over them, the
pixel-wise loss, and the learning-rate policy."""

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


def segmentation_loss(logits: Tensor, target: Tensor, mode: str) -> Tensor:
    """Cross-entropy over pixels, 255 ignored.

    ``sum`` (the reference): summed over each image's pixels and averaged over the images,
    as Caffe's SoftmaxWithLoss with ``normalize: false`` (normalisation by batch size), so
    the reference learning rates hold at any batch size. ``mean``: averaged over the
    labelled pixels of the batch. A batch with no pixel labelled gives 0.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if mode == "sum":
        return total / target.shape[0]
    labelled = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / labelled


def learning_rate_at(base: float, policy: str, iteration: int, max_iter: int) -> float:
    """``fixed``: ``base``; ``poly``: base x (1 - iteration / max_iter) ** 0.9."""
    if policy == "poly":
        return base * float((1 - min(iteration, max_iter) / max_iter) ** POLY_POWER)
    return base
