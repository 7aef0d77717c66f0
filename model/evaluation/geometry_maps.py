"""``fcn predict``'s geometry maps: a two-head model's second labels (SIFT Flow's sky,
horizontal, vertical) from the same run as its labels, whole or stitched from the same tiles,
as the service answers ``?output=geometry``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from contract import encode
from contract.schema import GEOMETRY, LABELS
from contract.tiling import segment_tiled_maps
from model.evaluation.predictors import OnnxPredictor, Predictor, TorchPredictor
from model.evaluation.tiles import TileOptions

Maps = tuple[NDArray[Any], NDArray[np.uint8]]  # labels and geometry, each [N, H, W]


def has_geometry(predictor: Predictor) -> bool:
    """Whether ``predictor`` gives geometry: an ONNX file with that output, or a two-head
    checkpoint's net (not its shift-and-stitch, which stitches one head)."""
    if isinstance(predictor, OnnxPredictor):
        return predictor.has_geometry
    if isinstance(predictor, TorchPredictor):
        return bool(getattr(predictor.net, "geometry_classes", 0))
    return False


def predict_maps(predictor: Predictor, images: NDArray[np.uint8]) -> Maps:
    """The labels and geometry of a [N, H, W, 3] uint8 batch, from one run of the model."""
    if isinstance(predictor, OnnxPredictor):
        found = predictor.outputs(images, [LABELS, GEOMETRY])
        return found[LABELS], found[GEOMETRY]
    assert isinstance(predictor, TorchPredictor)  # has_geometry said yes
    batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).to(predictor.device)
    autocast = predictor.autocast
    with (
        torch.inference_mode(),
        torch.autocast(batch.device.type, autocast, enabled=autocast is not None),
    ):
        logits, geometry = predictor.net(predictor.normalize(batch), geometry=True)
    labels = encode.as_labels(logits.argmax(1).cpu().numpy(), predictor.num_classes)
    return labels, geometry.argmax(1).to(torch.uint8).cpu().numpy()


def segment_with_geometry(
    predictor: Predictor, image: NDArray[np.uint8], tiles: TileOptions
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """The labels and geometry [H, W] of one image, whole or cut into tiles as ``tiles``
    says; each map keeps the pixels of the tile that owns them, as ``segment`` does."""
    plan = tiles.plan(image.shape[0], image.shape[1], predictor.tiling)
    if plan is None:
        labels, geometry = predict_maps(predictor, image[None])
        return labels[0], geometry[0]
    labels, geometry = segment_tiled_maps(image, plan, lambda batch: predict_maps(predictor, batch))
    return labels, geometry
