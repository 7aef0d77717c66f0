"""The validation pass: the confusion matrix (and the validation loss) of a PyTorch net over a
loader, images whole or cut into tiles. Training validates with it on one rank's shard (the
caller reduces the confusion matrix across ranks); ``fcn eval`` runs checkpoints with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader

from contract.palette import IGNORE_INDEX
from contract.tiling import segment_tiled
from model.evaluation.metrics import ConfusionMatrix
from model.evaluation.predictors import net_labels
from model.evaluation.tiles import TileOptions
from model.nets.fcn import FCN
from model.nets.preprocessing import Normalize

# Called per batch with (images uint8 [N, 3, H, W], targets [N, H, W], labels [N, H, W]).
BatchCallback = Callable[[Tensor, Tensor, Tensor], None]


class LossMeter:
    """The validation loss as the reference's score.py reports it: each image's loss (the
    training loss ``mode``: pixel sum, or mean over its labelled pixels; no class weights,
    no sampling), averaged over the images."""

    def __init__(self, mode: str, device: torch.device | str = "cpu"):
        self.mode = mode
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, images]

    def add(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch: logits [N, C, H, W], targets [N, H, W]."""
        per_pixel = F.cross_entropy(
            logits.float(), targets.long(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        per_image = per_pixel.flatten(1).sum(1).double()  # [N]
        if self.mode == "mean":
            labelled = (targets != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
            per_image = per_image / labelled
        self.totals[0] += per_image.sum().to(self.totals.device)
        self.totals[1] += per_image.numel()

    def value(self, *, all_reduce: bool = False) -> float:
        """The mean loss per image (over every process's images with ``all_reduce``)."""
        totals = self.totals.clone()
        if all_reduce and dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        return float(totals[0] / totals[1].clamp(min=1))


def evaluate_model(
    net: nn.Module,
    loader: DataLoader[tuple[Tensor, Tensor]],
    normalize: Normalize,
    num_classes: int,
    device: torch.device,
    *,
    autocast: torch.dtype | None = None,
    on_batch: BatchCallback | None = None,
    tiles: TileOptions | None = None,
    loss: LossMeter | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of ``net`` over ``loader`` (images at native size), on ``device``;
    with ``tiles``, each image cut as they say (``net`` an FCN, whose tiling says where).
    ``loss`` (whole images only) accumulates the validation loss of the logits."""
    if loss is not None and tiles is not None:
        raise ValueError("the validation loss needs whole-image logits, not tiles")
    was_training = net.training
    net.eval()
    confusion = ConfusionMatrix(num_classes, device=device)
    with torch.inference_mode():
        for batch_images, batch_targets in loader:
            images = batch_images.to(device, non_blocking=True)
            targets = batch_targets.to(device, non_blocking=True)
            if tiles is None:
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    logits = net(normalize(images))
                labels = logits.argmax(1)
                if loss is not None:
                    loss.add(logits, targets)
            else:
                assert isinstance(net, FCN), "tiling needs the FCN's own grid and context"
                labels = tiled_labels(net, normalize, images, tiles, autocast=autocast)
            confusion.update(targets, labels)
            if on_batch is not None:
                on_batch(images, targets, labels)
    net.train(was_training)
    return confusion


def tiled_labels(
    net: FCN,
    normalize: Normalize,
    images: Tensor,
    tiles: TileOptions,
    *,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """The labels [N, H, W] of uint8 images [N, 3, H, W], each cut into tiles by ``tiles``
    (one tile a pass) or run whole where they say so."""

    def predict(batch: NDArray[np.uint8]) -> NDArray[Any]:
        # [n, 3, h, w], laid out as the loader lays out whole images
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(images.device)
        return net_labels(net, normalize, tensor, autocast).cpu().numpy()

    labels: list[Tensor] = []
    for image in images:
        plan = tiles.plan(image.shape[1], image.shape[2], net.tiling)
        if plan is None:
            labels.append(net_labels(net, normalize, image[None], autocast)[0])
            continue
        rgb = image.permute(1, 2, 0).cpu().numpy()  # [H, W, 3]
        labels.append(torch.from_numpy(segment_tiled(rgb, plan, predict)).to(images.device))
    return torch.stack(labels)
