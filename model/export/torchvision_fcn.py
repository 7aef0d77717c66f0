"""torchvision's FCN-ResNet50 and FCN-ResNet101 exported to the ONNX contract: the graph,
verification and atomic write of our checkpoints' exports, with the published weights' card."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from contract.palette import VOC_CLASSES, voc_colormap
from model.export.exporter import export_net
from model.export.graph import ModelCard
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


def torchvision_card(
    name: TorchvisionFCNName,
    *,
    metrics: Mapping[str, float] | None = None,
    origin: Mapping[str, str] | None = None,
) -> ModelCard:
    """What the file says of torchvision's ``name``, with the figures and origin of its
    weights where they are published ones."""
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
        metrics=dict(metrics or {}),
        origin=dict(origin or {}),
    )


def export_torchvision_fcn(
    name: TorchvisionFCNName,
    out: str | os.PathLike[str],
    *,
    weights_path: str | os.PathLike[str] | None = None,
    verify: bool = True,
    metrics: Mapping[str, float] | None = None,
    origin: Mapping[str, str] | None = None,
) -> Path:
    """Export torchvision's ``name`` to ``out``: weights from ``weights_path`` (a ``.pth``
    state dict such as torchvision publishes; the auxiliary head is dropped), random ones
    without it. ``metrics`` and ``origin`` are the weights' figures and ``fcn.origin``.

    Verified against PyTorch unless asked not; ``ExportError`` (``WeightsError`` for a
    weights file that does not fit) leaves ``out`` as it was.
    """
    net = build_torchvision_fcn(name)
    if weights_path is not None:
        load_torchvision_weights(net, Path(weights_path))
    card = torchvision_card(name, metrics=metrics, origin=origin)
    return export_net(net, card, out, verify=verify, subject=f"torchvision's {name}").path
