"""``fcn eval``: a checkpoint's, or an exported ONNX file's, four metrics on a data set, with
its report (``model.evaluation.report``), its calibration (``model.evaluation.calibration``)
and optionally the predicted label maps and overlays. Images run whole, or, when asked, cut
into tiles as ``fcn predict`` and the service cut them (``contract.tiling``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from model.data.checks import check_dataset, format_problems
from model.data.datasets import DataError, SegmentationDataset
from model.data.layouts import open_dataset
from model.data.reference_sets import SIFTFlowDataset
from model.data.transforms import collate_padded
from model.devices import resolve_device
from model.evaluation.calibration import Calibration, plot_reliability
from model.evaluation.geometry import geometric_accuracy, geometry_counts, has_geometry
from model.evaluation.metrics import ConfusionMatrix
from model.evaluation.outputs import write_label_png, write_overlay
from model.evaluation.predictors import (
    PredictError,
    Predictor,
    TorchPredictor,
    load_predictor,
    segment,
    segment_with_confidence,
)
from model.evaluation.report import Evaluation, plot_confusion, write_metrics
from model.evaluation.tiles import DEFAULT_TILE_OVERLAP, TileOptions
from model.evaluation.validation import BatchCallback, LossMeter, evaluate_model
from model.files import check_folder


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    data_format: str = "auto",
    out: str | Path | None = None,
    save_predictions: bool = False,
    overlays: bool = False,
    device: str = "auto",
    amp: str = "none",
    workers: int = 2,
    check_data: bool = True,
    tile_size: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    max_model_pixels: int | None = None,
    shift_and_stitch: int = 1,
    runtime: str = "auto",
    precision: str = "auto",
) -> Evaluation:
    """Evaluate a checkpoint, or an exported ONNX file (on ONNX Runtime or OpenVINO at
    ``runtime`` and ``precision``, chosen as the service chooses), on ``data``, with its
    calibration (unless an ONNX file lacks ``confidence``); with ``out``, write metrics.json,
    confusion.png and reliability.png there (and predictions/ID.png, overlays/ID.jpg when
    asked). The data is checked first, so a bad file is named rather than failing mid-way.

    Images run whole, unless ``tile_size`` is given or an image's padded size exceeds
    ``max_model_pixels``: then they are cut into tiles sharing ``tile_overlap`` pixels, as
    ``fcn predict`` and the service cut them. ``shift_and_stitch`` F > 1 runs a checkpoint's
    FCN-32s at output stride 32 / F (``model.nets.shift_stitch``), on whole images."""
    tiles = None
    if tile_size or max_model_pixels is not None:
        tiles = TileOptions(tile_size, tile_overlap, max_model_pixels)
    if shift_and_stitch != 1 and tiles is not None:
        raise PredictError(
            f"--shift-and-stitch {shift_and_stitch}: evaluates whole images; drop --tile-size "
            "and --max-model-pixels"
        )
    out_dir = None if out is None else check_folder(out)
    target_device = resolve_device(device)
    predictor = load_predictor(
        checkpoint, device, amp, shift_and_stitch, runtime=runtime, precision=precision
    )
    classes, palette = list(predictor.classes), list(predictor.palette)
    torch_predictor = predictor if isinstance(predictor, TorchPredictor) else None
    # Batches of one image are never padded: the fill matters only to checkpoints' loaders.
    fill_rgb = (0, 0, 0) if torch_predictor is None else torch_predictor.preprocessing.mean_rgb_255
    dataset = open_dataset(data, split, data_format)
    if dataset.num_classes != len(classes):
        raise DataError(
            f"{dataset.root}: {dataset.num_classes} classes, but {checkpoint} predicts "
            f"{len(classes)}"
        )
    if check_data:
        problems = check_dataset(dataset, workers=max(2, workers), progress=True)
        if problems:
            raise DataError(f"{len(problems)} problem(s) in the data:\n{format_problems(problems)}")
    loader: DataLoader[tuple[Tensor, Tensor]] = DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=partial(collate_padded, fill_rgb=fill_rgb),
        pin_memory=target_device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    on_batch: BatchCallback | None = None
    if out_dir is not None and (save_predictions or overlays):
        prediction_dir, overlay_dir = out_dir / "predictions", out_dir / "overlays"
        for folder, wanted in ((prediction_dir, save_predictions), (overlay_dir, overlays)):
            if wanted:
                folder.mkdir(parents=True, exist_ok=True)
        position = iter(range(len(dataset)))

        def on_batch(images: Tensor, targets: Tensor, labels: Tensor) -> None:
            for image, label in zip(images, labels, strict=True):
                sample = dataset.samples[next(position)]
                label_np = label.cpu().numpy()
                if save_predictions:
                    write_label_png(label_np, palette, prediction_dir / f"{sample.id}.png")
                if overlays:
                    rgb = image.permute(1, 2, 0).cpu().numpy()
                    write_overlay(rgb, label_np, palette, overlay_dir / f"{sample.id}.jpg")

    meter = None
    calibration = Calibration(len(classes)) if predictor.has_confidence else None
    if torch_predictor is None:
        confusion = evaluate_predictor(
            predictor, loader, len(classes), on_batch=on_batch, tiles=tiles, calibration=calibration
        )
    else:
        if tiles is None:
            meter = LossMeter(str(torch_predictor.config.get("loss", "sum")), target_device)
        confusion = evaluate_model(
            torch_predictor.net,
            loader,
            torch_predictor.normalize,
            len(classes),
            torch_predictor.device,
            autocast=torch_predictor.autocast,
            on_batch=on_batch,
            tiles=tiles,
            loss=meter,
            calibration=calibration,
        )
    geometry = _geometric_accuracy(torch_predictor, dataset)
    result = Evaluation(
        confusion.compute(),
        confusion.matrix.cpu(),
        classes,
        len(dataset),
        loss=None if meter is None else meter.value(),
        loss_mode=meter.mode if meter is not None else "sum",
        geometric_accuracy=geometry,
        calibration=None if calibration is None else calibration.compute(),
    )
    if out_dir is not None:
        _write_report(result, Path(checkpoint), dataset, out_dir)
    return result


def _geometric_accuracy(
    predictor: TorchPredictor | None, dataset: SegmentationDataset
) -> float | None:
    """SIFT Flow's geometric accuracy of a two-head checkpoint; None for one head, for an
    ONNX model and for other data sets."""
    if predictor is None or not isinstance(dataset, SIFTFlowDataset):
        return None
    if not has_geometry(predictor.net, dataset):
        return None
    counts = geometry_counts(
        predictor.net, dataset, predictor.normalize, predictor.device, autocast=predictor.autocast
    )
    return geometric_accuracy(counts)


def _write_report(
    result: Evaluation, checkpoint: Path, dataset: SegmentationDataset, out_dir: Path
) -> None:
    """metrics.json, confusion.png and, when measured, reliability.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(result, checkpoint, dataset, out_dir / "metrics.json")
    plot_confusion(result.confusion, result.classes, out_dir / "confusion.png")
    if result.calibration is not None:
        plot_reliability(result.calibration, out_dir / "reliability.png")


def evaluate_predictor(
    predictor: Predictor,
    loader: DataLoader[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    on_batch: BatchCallback | None = None,
    tiles: TileOptions | None = None,
    calibration: Calibration | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of an exported model over ``loader``, each image run as
    ``fcn predict`` and the service run it (whole, unless ``tiles`` cut it); with
    ``calibration``, the model's confidence of every pixel is added to it."""
    tiles = tiles or TileOptions(max_model_pixels=None)
    confusion = ConfusionMatrix(num_classes)
    for batch_images, batch_targets in loader:
        rgbs = [image.permute(1, 2, 0).numpy() for image in batch_images]
        if calibration is None:
            maps = [torch.from_numpy(segment(predictor, rgb, tiles)) for rgb in rgbs]
            labels = torch.stack(maps).long()
        else:
            pairs = [segment_with_confidence(predictor, rgb, tiles) for rgb in rgbs]
            labels = torch.stack([torch.from_numpy(p[0]) for p in pairs]).long()
            confidence = torch.stack([torch.from_numpy(p[1]) for p in pairs])
        confusion.update(batch_targets, labels)
        if calibration is not None:
            calibration.update(batch_targets, labels, confidence)
        if on_batch is not None:
            on_batch(batch_images, batch_targets, labels)
    return confusion
