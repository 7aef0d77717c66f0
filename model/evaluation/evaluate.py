"""A checkpoint's four metrics on a data set, per-class IoU, the confusion matrix as a PNG,
and optionally the predicted label maps and overlays (``fcn eval``). Images run whole, or,
when asked, cut into tiles as ``fcn predict`` and the service cut them (``contract.tiling``).

``evaluate_model`` is also the validation step of training (one rank's shard; the caller
reduces the confusion matrix across ranks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
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
from model.checkpoint import Checkpoint, load_checkpoint
from model.data.checks import check_dataset, format_problems
from model.data.datasets import DataError, SegmentationDataset
from model.data.layouts import open_dataset
from model.data.transforms import collate_padded
from model.devices import amp_dtype, resolve_device
from model.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, json_safe
from model.evaluation.predict import (
    DEFAULT_TILE_OVERLAP,
    ONNX_SUFFIX,
    OnnxPredictor,
    PredictError,
    TileOptions,
    net_labels,
    segment,
    stitched,
    write_label_png,
    write_overlay,
)
from model.files import atomic_path, check_folder
from model.nets.fcn import FCN
from model.nets.preprocessing import Normalize

# The confusion plot: past this many classes, names label every k-th row and column only,
# and the figure stops growing (a 150-class set would otherwise be a 70-inch image).
MAX_TICKS = 60
MAX_FIGURE_INCHES = 30.0
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


def evaluate_predictor(
    predictor: OnnxPredictor,
    loader: DataLoader[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    on_batch: BatchCallback | None = None,
    tiles: TileOptions | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of an exported model over ``loader``, each image run as
    ``fcn predict`` and the service run it (whole, unless ``tiles`` cut it)."""
    tiles = tiles or TileOptions(max_model_pixels=None)
    confusion = ConfusionMatrix(num_classes)
    for batch_images, batch_targets in loader:
        labels = torch.stack(
            [
                torch.from_numpy(segment(predictor, image.permute(1, 2, 0).numpy(), tiles))
                for image in batch_images
            ]
        ).long()
        confusion.update(batch_targets, labels)
        if on_batch is not None:
            on_batch(batch_images, batch_targets, labels)
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


@dataclass
class Evaluation:
    metrics: SegmentationMetrics
    confusion: Tensor  # [C, C] int64, rows = truth
    classes: list[str]
    images: int
    # The loss as the reference's score.py reports it (``LossMeter``), in the checkpoint's
    # training loss; None where no logits are at hand (an ONNX model, tiles).
    loss: float | None = None
    loss_mode: str = "sum"


def class_table(metrics: SegmentationMetrics, classes: list[str], confusion: Tensor) -> str:
    """Per-class IoU, accuracy and ground-truth pixels as an aligned text table."""
    pixels = confusion.sum(1).tolist()
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'pixels':>12}"]
    for name, iu, acc, n in zip(
        classes, metrics.class_iu, metrics.class_accuracy, pixels, strict=True
    ):
        iu_text = "-" if math.isnan(iu) else f"{100 * iu:6.2f}%"
        acc_text = "-" if math.isnan(acc) else f"{100 * acc:6.2f}%"
        lines.append(f"{name:<{width}}  {iu_text:>7}  {acc_text:>7}  {n:>12,}")
    return "\n".join(lines)


def plot_confusion(confusion: Tensor, classes: list[str], path: Path) -> Path:
    """The row-normalised confusion matrix (truth rows, prediction columns) as a PNG."""
    from matplotlib.figure import Figure

    counts = confusion.to(torch.float64).cpu().numpy()
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(classes)
    size = min(max(4.0, 0.45 * n + 2), MAX_FIGURE_INCHES)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.add_subplot()
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = range(0, n, math.ceil(n / MAX_TICKS))  # every class up to MAX_TICKS of them
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90)
    ax.set_yticks(ticks, [classes[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion (share of each true class)")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if share[i, j] >= 0.005:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{share[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    fig.colorbar(shown, ax=ax, shrink=0.8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


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
) -> Evaluation:
    """Evaluate a checkpoint, or an exported ONNX file (on ONNX Runtime, as the service runs
    it), on ``data``; with ``out``, write metrics.json and confusion.png
    there (and predictions/ID.png, overlays/ID.jpg when asked). The data is checked first,
    so a bad file is named rather than failing mid-way.

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
    model = _load(checkpoint, device, amp, shift_and_stitch)
    classes, palette = list(model.classes), list(model.palette)
    # Batches of one image are never padded: the fill matters only to checkpoints' loaders.
    fill_rgb = model.preprocessing.mean_rgb_255 if isinstance(model, Checkpoint) else (0, 0, 0)
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
    if isinstance(model, OnnxPredictor):
        confusion = evaluate_predictor(model, loader, len(classes), on_batch=on_batch, tiles=tiles)
    else:
        if tiles is None:
            meter = LossMeter(str(model.config.get("loss", "sum")), target_device)
        net = stitched(model.build_model(), shift_and_stitch, str(checkpoint))
        confusion = evaluate_model(
            net.to(target_device),
            loader,
            Normalize(model.preprocessing).to(target_device),
            len(classes),
            target_device,
            autocast=amp_dtype(amp, target_device),
            on_batch=on_batch,
            tiles=tiles,
            loss=meter,
        )
    result = Evaluation(
        confusion.compute(),
        confusion.matrix.cpu(),
        classes,
        len(dataset),
        loss=None if meter is None else meter.value(),
        loss_mode=meter.mode if meter is not None else "sum",
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_metrics(result, Path(checkpoint), dataset, out_dir / "metrics.json")
        plot_confusion(result.confusion, result.classes, out_dir / "confusion.png")
    return result


def _load(
    model: str | Path, device: str, amp: str, shift_and_stitch: int = 1
) -> OnnxPredictor | Checkpoint:
    """An exported file on ONNX Runtime, or a checkpoint, by the file's suffix."""
    if Path(model).suffix.lower() == ONNX_SUFFIX:
        if amp != "none":
            raise PredictError(f"--amp {amp}: an ONNX model runs at its exported precision")
        if shift_and_stitch != 1:
            raise PredictError(
                f"--shift-and-stitch {shift_and_stitch}: {model} is an exported graph; give "
                "the checkpoint (or export it with the option)"
            )
        return OnnxPredictor(model, device)
    return load_checkpoint(model)


def _write_metrics(
    result: Evaluation, checkpoint: Path, dataset: SegmentationDataset, path: Path
) -> None:
    record = {
        "checkpoint": str(checkpoint),
        "data": dataset.describe(),
        "images": result.images,
        **result.metrics.summary(),
        "loss": result.loss,
        "loss_mode": result.loss_mode,
        "classes": result.classes,
        "class_iu": result.metrics.class_iu,
        "class_accuracy": result.metrics.class_accuracy,
        "confusion": result.confusion.tolist(),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(record), indent=2) + "\n")


def format_summary(metrics: SegmentationMetrics) -> str:
    """The four metrics on one line, in percent, as the paper's tables give them."""
    return (
        f"pixel acc {100 * metrics.pixel_accuracy:.2f}  "
        f"mean acc {100 * metrics.mean_accuracy:.2f}  "
        f"mean IU {100 * metrics.mean_iu:.2f}  f.w. IU {100 * metrics.frequency_weighted_iu:.2f}"
    )
