"""Static int8 quantization of an exported schema-1 file (``fcn export --int8``): ONNX
Runtime's quantizer in the QDQ format, calibrated on a folder of images, and the int8 file
compared with its fp32 source on images, labelled or not.

Only the convolutions (and any MatMul) are quantized, weights per output channel: they hold
nearly all the work. The contract's parts stay float (cast, normalisation, crops, argmax),
and so do the bilinear ConvTransposes: ONNX Runtime's CPU provider has no int8 kernel for
them, so quantizing them only adds (de)quantization and costs time and accuracy.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from contract.inputs import InputError, collect_images
from contract.schema import MetadataError
from model.data.datasets import DataError, read_image
from model.data.layouts import detect_format, open_dataset
from model.evaluation.metrics import ConfusionMatrix, SegmentationMetrics
from model.export.graph import ExportError
from model.export.metadata import model_metadata
from model.files import atomic_path

if TYPE_CHECKING:
    from model.data.datasets import SegmentationDataset

# The metadata key describing the scheme (optional: float files have none).
KEY = "fcn.quantization"
QUANTIZED_OPS = ("Conv", "MatMul")
# The split calibration reads from a labelled layout, and the one comparison reads.
CALIBRATION_SPLITS = {"voc": "train", "sbd": "train", "folder": "all"}
VALIDATION_SPLITS = {"voc": "val", "sbd": "val", "folder": "all"}
# Metadata the quantizer's own steps add; they describe its tools, not the model.
TOOL_KEYS = ("onnx.infer", "onnx.quant.pre_process")


class QuantizeError(ExportError):
    """The model cannot be quantized as asked; the message names the file or folder."""


@dataclass(frozen=True)
class ImageSet:
    """Images (and their targets, when the folder is a labelled data set) to calibrate on
    or to compare with; ``source`` names the folder (and split) in messages."""

    source: str
    images: tuple[Path, ...]
    dataset: SegmentationDataset | None = None
    indices: tuple[int, ...] = ()  # into ``dataset``, one per image

    @property
    def labelled(self) -> bool:
        return self.dataset is not None

    @property
    def num_classes(self) -> int | None:
        return None if self.dataset is None else self.dataset.num_classes

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[NDArray[np.uint8], NDArray[Any] | None]:
        """Image ``i`` as RGB uint8 [H, W, 3] and its target [H, W] (None when unlabelled)."""
        if self.dataset is None:
            return read_image(self.images[i]), None
        image, target = self.dataset.load(self.indices[i])
        return image, target


def _spread(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``total`` (all of them when None or more)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def image_set(
    folder: str | os.PathLike[str],
    *,
    split: str | None = None,
    count: int | None = None,
    default_splits: dict[str, str] = CALIBRATION_SPLITS,
) -> ImageSet:
    """Up to ``count`` images (spread evenly) of a data set in a known layout (VOC, SBD,
    images/ + masks/), labelled, from ``split`` (default by layout, ``default_splits``);
    or of a plain folder of images, as ``contract.inputs.collect_images`` finds them (at
    any depth, hidden files left out; no split, no labels)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of images")
    if count is not None and count < 1:
        raise DataError(f"{root}: need at least 1 image, asked for {count}")
    try:
        fmt = detect_format(root)
    except DataError:
        fmt = None
    if fmt is None:
        if split is not None:
            raise DataError(f"{root}: a plain folder of images has no split {split!r}")
        try:
            found = list(collect_images([root]))
        except InputError as exc:  # no images, or two with one stem
            raise DataError(
                f"{root}: {exc}, and not a data set (VOC, SBD or images/ + masks/)"
            ) from exc
        return ImageSet(str(root), tuple(found[i] for i in _spread(len(found), count)))
    chosen = split or default_splits[fmt]
    dataset = open_dataset(root, chosen, fmt)
    if not len(dataset):
        raise DataError(f"{root}: split {chosen!r} has no images")
    picked = _spread(len(dataset), count)
    return ImageSet(
        f"{root} ({chosen})",
        tuple(dataset.samples[i].image for i in picked),
        dataset,
        tuple(picked),
    )


def _reader(images: ImageSet) -> Any:
    """A ``CalibrationDataReader`` handing the quantizer one image at a time, as the
    contract's input (uint8 [1, H, W, 3]; sizes may differ, MinMax reduces each tensor)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.position = iter(range(len(images)))

        def get_next(self) -> dict[str, NDArray[np.uint8]] | None:
            i = next(self.position, None)
            if i is None:
                return None
            image, _ = images.load(i)
            return {"image": np.ascontiguousarray(image[None])}

    return Reader()


@dataclass(frozen=True)
class QuantizeResult:
    """A written int8 file, the size of its fp32 source, what it was calibrated on and how
    long that took."""

    path: Path
    size_bytes: int
    source_bytes: int
    seconds: float
    calibration: ImageSet
    scheme: dict[str, Any]


def scheme(
    calibration: ImageSet, *, per_channel: bool, ops: Sequence[str], method: str = "MinMax"
) -> dict[str, Any]:
    """The ``fcn.quantization`` value: what is int8, how, and what set the ranges."""
    return {
        "format": "QDQ",
        "weights": "int8 per-channel symmetric" if per_channel else "int8 per-tensor symmetric",
        "activations": "uint8 per-tensor asymmetric",
        "ops": list(ops),
        "calibration": {"method": method, "images": len(calibration), "source": calibration.source},
    }


def _used_domains(model: onnx.ModelProto) -> set[str]:
    return {node.domain for node in model.graph.node} | {""}


def _tidy(model: onnx.ModelProto, source: onnx.ModelProto, value: dict[str, Any]) -> None:
    """The fp32 file's metadata on the int8 model, plus ``fcn.quantization``; only the
    opset domains its nodes use (the pre-processing's optimiser imports a dozen)."""
    props = {p.key: p.value for p in source.metadata_props if p.key not in TOOL_KEYS}
    props[KEY] = json.dumps(value)
    del model.metadata_props[:]
    for key, text in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    used = _used_domains(model)
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.doc_string = f"{source.doc_string} (int8, QDQ)".strip()


def quantize_file(
    fp32: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: ImageSet,
    *,
    per_channel: bool = True,
    ops: Sequence[str] = QUANTIZED_OPS,
) -> QuantizeResult:
    """Quantize the schema-1 file ``fp32`` to int8 at ``out``, its activation ranges
    calibrated on ``calibration``; the result keeps the contract (checked before it takes
    ``out``'s place) and its metadata, plus ``fcn.quantization``. On any error ``out`` is
    left as it was."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source_path, target = Path(fp32), Path(out)
    if not len(calibration):
        raise QuantizeError(f"{calibration.source}: no calibration images")
    try:
        source = onnx.load(source_path, load_external_data=False)
        meta = model_metadata(source, str(source_path))
    except MetadataError as exc:
        raise QuantizeError(str(exc)) from exc
    except Exception as exc:
        raise QuantizeError(f"{source_path}: not a readable ONNX file ({exc})") from exc
    if meta.precision != "fp32":
        raise QuantizeError(f"{source_path}: is {meta.precision}; int8 starts from an fp32 export")
    if KEY in {p.key for p in source.metadata_props}:
        raise QuantizeError(f"{source_path}: is already quantized ({KEY})")
    if calibration.num_classes not in (None, meta.num_classes):
        raise QuantizeError(
            f"{calibration.source}: {calibration.num_classes} classes, "
            f"but {source_path} predicts {meta.num_classes}"
        )
    value = scheme(calibration, per_channel=per_channel, ops=ops)
    start = time.perf_counter()
    # The quantizer's scratch files (pre-processed and augmented models) go to a private
    # folder, never beside the user's files or in the working directory.
    with tempfile.TemporaryDirectory(prefix="fcn-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "int8.onnx"
        # Symbolic shape inference cannot settle the crops' arithmetic on dynamic H and W
        # (and leaves files in the working directory when it fails): ONNX's own is enough.
        quant_pre_process(source_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            _reader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        model = onnx.load(quantized)
    _tidy(model, source, value)
    del source
    try:
        with atomic_path(target) as tmp:
            onnx.save_model(model, tmp)
            del model
            _check_runs(tmp, str(target))
            size = tmp.stat().st_size
    except OSError as exc:
        raise QuantizeError(f"{target}: cannot write it ({exc.strerror or exc})") from exc
    return QuantizeResult(
        target, size, source_path.stat().st_size, time.perf_counter() - start, calibration, value
    )


def _check_runs(path: Path, source: str) -> None:
    """The written file as the service reads it: ONNX Runtime loads it and the contract
    holds; else QuantizeError (and the file does not take ``source``'s place)."""
    from model.evaluation.predictors import OnnxPredictor, PredictError

    try:
        predictor = OnnxPredictor(path, device="cpu")
        predictor(np.zeros((1, 1, 3), np.uint8))  # the 1x1 corner case of the padding
    except PredictError as exc:
        raise QuantizeError(str(exc).replace(str(path), source)) from exc
    except Exception as exc:  # ORT raises its own pybind exception types
        raise QuantizeError(f"{source}: ONNX Runtime cannot run the int8 model ({exc})") from exc


@dataclass(frozen=True)
class Comparison:
    """The int8 model against its fp32 source on the same images."""

    images: ImageSet
    agreement: float  # share of all pixels with the same label
    fp32: SegmentationMetrics | None  # against the targets, when labelled
    int8: SegmentationMetrics | None
    fp32_seconds: float  # total inference time on the images, one at a time
    int8_seconds: float

    def lines(self) -> list[str]:
        """A short human-readable report."""
        n = len(self.images)
        out = [f"int8 vs fp32 on {n} image{'s' if n != 1 else ''} of {self.images.source}:"]
        out.append(f"  labels agree {self.agreement:.4%}")
        if self.fp32 is not None and self.int8 is not None:
            delta = 100 * (self.int8.mean_iu - self.fp32.mean_iu)
            out.append(
                f"  mean IU fp32 {100 * self.fp32.mean_iu:.2f}, int8 {100 * self.int8.mean_iu:.2f}"
                f" ({delta:+.2f} points)"
            )
        else:
            out.append("  mean IU: not measured (no labels in this folder)")
        if self.int8_seconds > 0:
            out.append(
                f"  time on ONNX Runtime CPU: fp32 {self.fp32_seconds:.2f} s, "
                f"int8 {self.int8_seconds:.2f} s ({self.fp32_seconds / self.int8_seconds:.2f}x)"
            )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _timed_labels(predictor: Any, image: NDArray[np.uint8]) -> tuple[NDArray[Any], float]:
    start = time.perf_counter()
    labels = predictor(image)
    return np.asarray(labels), time.perf_counter() - start


def compare(
    fp32: str | os.PathLike[str], int8: str | os.PathLike[str], images: ImageSet
) -> Comparison:
    """Label agreement of ``int8`` with ``fp32`` on ``images`` and, when they are labelled,
    both models' metrics (each image whole, as ``fcn eval`` runs an ONNX file)."""
    from model.evaluation.predictors import OnnxPredictor

    reference, candidate = OnnxPredictor(Path(fp32), "cpu"), OnnxPredictor(Path(int8), "cpu")
    classes = len(reference.classes)
    confusions = None
    if images.num_classes is not None:
        if images.num_classes != classes:
            raise QuantizeError(
                f"{images.source}: {images.num_classes} classes, but {fp32} predicts {classes}"
            )
        confusions = ConfusionMatrix(classes), ConfusionMatrix(classes)
    same = total = 0
    seconds = [0.0, 0.0]
    for i in range(len(images)):
        image, target = images.load(i)
        results = [_timed_labels(p, image) for p in (reference, candidate)]
        for k, (_, took) in enumerate(results):
            seconds[k] += took
        (a, _), (b, _) = results
        same += int((a == b).sum())
        total += a.size
        if confusions is not None and target is not None:
            truth = torch.from_numpy(np.asarray(target, dtype=np.int64))
            for matrix, labels in zip(confusions, (a, b), strict=True):
                matrix.update(truth, torch.from_numpy(labels.astype(np.int64)))
    fp32_metrics = int8_metrics = None
    if confusions is not None:
        fp32_metrics, int8_metrics = (m.compute() for m in confusions)
    return Comparison(
        images, same / max(total, 1), fp32_metrics, int8_metrics, seconds[0], seconds[1]
    )
