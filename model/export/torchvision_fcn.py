"""torchvision's FCN-ResNet50 and FCN-ResNet101 exported to the ONNX contract: the graph,
verification and atomic write of our checkpoints' exports, with the published weights' card."""

from __future__ import annotations

import os
from pathlib import Path

from contract.palette import VOC_CLASSES, voc_colormap
from model.export.exporter import write_model
from model.export.graph import ModelCard, trace_onnx
from model.export.verify import VerificationReport, verify_net
from model.nets.preprocessing import TORCHVISION
from model.nets.torchvision_fcn import (
    NUM_CLASSES,
    TorchvisionFCNName,
    build_torchvision_fcn,
    load_torchvision_weights,
    torchvision_tiling,
)

# torchvision trained the published weights on COCO train2017, on the images and classes
# that VOC shares with it.
DATASET = "coco-voc-subset (torchvision)"
# torchvision's figures for its COCO_WITH_VOC_LABELS_V1 weights on COCO val2017 with VOC's
# labels ("miou", "pixel_acc" in percent), under our metric names and as fractions.
PUBLISHED_METRICS: dict[TorchvisionFCNName, dict[str, float]] = {
    "fcn_resnet50": {"mean_iu": 0.605, "pixel_accuracy": 0.914},
    "fcn_resnet101": {"mean_iu": 0.637, "pixel_accuracy": 0.919},
}


def torchvision_card(name: TorchvisionFCNName, *, published: bool) -> ModelCard:
    """What the file says of torchvision's ``name``: ``published`` weights carry
    torchvision's figures, random ones none."""
    backbone = name.removeprefix("fcn_")
    return ModelCard(
        arch=f"fcn-{backbone}",
        backbone=backbone,
        width=1.0,
        classes=VOC_CLASSES,
        palette=voc_colormap(NUM_CLASSES),
        preprocessing=TORCHVISION,
        tiling=torchvision_tiling(name),
        dataset=DATASET,
        metrics=PUBLISHED_METRICS[name] if published else {},
    )


def export_torchvision_fcn(
    name: TorchvisionFCNName,
    out: str | os.PathLike[str],
    *,
    weights_path: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> Path:
    """Export torchvision's ``name`` to ``out``: its published weights from ``weights_path``
    (a ``.pth`` state dict; the auxiliary head is dropped), random ones without it.

    Verified against PyTorch unless asked not; ``ExportError`` (``WeightsError`` for a
    weights file that does not fit) leaves ``out`` as it was.
    """
    net = build_torchvision_fcn(name)
    if weights_path is not None:
        load_torchvision_weights(net, Path(weights_path))
    net.eval()
    card = torchvision_card(name, published=weights_path is not None)

    def check(tmp: Path, source: str) -> VerificationReport:
        subject = f"torchvision's {name}"
        return verify_net(tmp, lambda: net, card, source=source, subject=subject)

    return write_model(out, lambda: trace_onnx(net, card), check if verify else None).path
