"""The evaluation tests' reference: the confusion matrix computed by hand, one image at a time
at native size, for the checks of ``fcn eval`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import torch

from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES
from model.evaluation.metrics import ConfusionMatrix
from model.nets.preprocessing import Normalize
from model.nets.shift_stitch import shift_and_stitch


def reference_confusion(checkpoint: Path, data: Path, factor: int = 1) -> ConfusionMatrix:
    """The confusion matrix of ``checkpoint`` on the val split of the synthetic set ``data``,
    by hand: one image at a time, at native size; under shift-and-stitch ``factor`` > 1."""
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    net = ckpt.build_model().eval()
    if factor > 1:
        net = shift_and_stitch(net, factor)
    normalize = Normalize(ckpt.preprocessing)
    confusion = ConfusionMatrix(len(SYNTH_CLASSES))
    dataset = voc_dataset(data, "val")
    with torch.no_grad():
        for i in range(len(dataset)):
            image, target = dataset[i]
            confusion.update(target, net(normalize(image[None])).argmax(1)[0])
    return confusion
