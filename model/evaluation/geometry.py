"""SIFT Flow's geometric accuracy (the paper's Table 5, "geom. acc."): the pixel accuracy of a
two-head net's geometric head (sky, horizontal, vertical) on a data set's geometric labels."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from contract.palette import IGNORE_INDEX
from model.data.datasets import SegmentationDataset, read_image
from model.data.reference_sets import SIFTFlowDataset
from model.nets.preprocessing import Normalize


def has_geometry(net: nn.Module, dataset: SegmentationDataset) -> bool:
    """Whether ``net`` has a geometric head and ``dataset`` geometric labels to score it on."""
    return bool(getattr(net, "geometry_classes", 0)) and isinstance(dataset, SIFTFlowDataset)


def geometry_counts(
    net: nn.Module,
    dataset: SIFTFlowDataset,
    normalize: Normalize,
    device: torch.device,
    *,
    autocast: torch.dtype | None = None,
    indices: Iterable[int] | None = None,
) -> Tensor:
    """[correct, labelled] pixels (int64, on ``device``) of ``net``'s geometric head over the
    images ``indices`` (default: all) at native size; void (255) pixels do not count."""
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for index in range(len(dataset)) if indices is None else indices:
            rgb = read_image(dataset.samples[index].image)  # [H, W, 3]
            image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].to(device)
            target = torch.from_numpy(dataset.load_geometry(index)).to(device).long()
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                _, logits = net(normalize(image), geometry=True)
            labelled = target != IGNORE_INDEX
            counts[0] += (logits[0].argmax(0) == target)[labelled].sum()
            counts[1] += labelled.sum()
    net.train(was_training)
    return counts


def geometric_accuracy(counts: Tensor, *, all_reduce: bool = False) -> float:
    """correct / labelled of ``geometry_counts`` (summed over every process with
    ``all_reduce``); NaN when no pixel is labelled."""
    totals = counts.clone()
    if all_reduce and dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    correct, labelled = (int(v) for v in totals.tolist())
    return correct / labelled if labelled else float("nan")
