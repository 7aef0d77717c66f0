"""The validation pass: the confusion matrix (and the validation loss, and the calibration) of
a PyTorch net over a loader, images whole or cut into tiles. Training validates with it on one
rank's shard (the caller reduces the confusion matrix across ranks); ``fcn eval`` runs
checkpoints with it.
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
from contract.tiling import segment_tiled_maps
from model.evaluation.calibration import Calibration, confidence_of
from model.evaluation.metrics import ConfusionMatrix
from model.evaluation.predictors import net_outputs
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
    calibration: Calibration | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of ``net`` over ``loader`` (images at native size), on ``device``;
    with ``tiles``, each image cut as they say (``net`` an FCN, whose tiling says where).
    ``loss`` (whole images only) accumulates the validation loss of the logits,
    ``calibration`` the contract's confidence of every pixel."""
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
                confidence = confidence_of(logits) if calibration is not None else None
                if loss is not None:
                    loss.add(logits, targets)
            else:
                assert isinstance(net, FCN), "tiling needs the FCN's own grid and context"
                labels, confidence = tiled_outputs(net, normalize, images, tiles, autocast=autocast)
            confusion.update(targets, labels)
            if calibration is not None:
                assert confidence is not None
                calibration.update(targets, labels, confidence)
            if on_batch is not None:
                on_batch(images, targets, labels)
    net.train(was_training)
    return confusion


def tiled_outputs(
    net: FCN,
    normalize: Normalize,
    images: Tensor,
    tiles: TileOptions,
    *,
    autocast: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The labels and confidence [N, H, W] of uint8 images [N, 3, H, W], each cut into tiles
    by ``tiles`` (one tile a pass, both maps stitched alike) or run whole where they say so."""

    def predict(batch: NDArray[np.uint8]) -> tuple[NDArray[Any], NDArray[Any]]:
        # [n, 3, h, w], laid out as the loader lays out whole images
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(images.device)
        labels, confidence = net_outputs(net, normalize, tensor, autocast)
        return labels.cpu().numpy(), confidence.cpu().numpy()

    labels: list[Tensor] = []
    confidence: list[Tensor] = []
    for image in images:
        plan = tiles.plan(image.shape[1], image.shape[2], net.tiling)
        if plan is None:
            whole = net_outputs(net, normalize, image[None], autocast)
            labels.append(whole[0][0])
            confidence.append(whole[1][0])
            continue
        rgb = image.permute(1, 2, 0).cpu().numpy()  # [H, W, 3]
        maps = segment_tiled_maps(rgb, plan, predict)
        labels.append(torch.from_numpy(maps[0]).to(images.device))
        confidence.append(torch.from_numpy(maps[1]).to(images.device))
    return torch.stack(labels), torch.stack(confidence)
