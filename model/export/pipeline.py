"""``fcn export``'s library side from end to end: a checkpoint to a verified fp32 file,
optionally quantized to int8 (calibrated, then compared with fp32), optionally placed in a
Triton model repository. Heavy modules are imported where used: ``--help`` stays quick."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from model.errors import FCNError
from model.export.triton import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_NAME,
    TritonError,
    write_triton_repository,
)

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint
    from model.export.exporter import ExportResult
    from model.export.quantize import Comparison, ImageSet, QuantizeResult

DEFAULT_CALIBRATION_COUNT = 32
DEFAULT_VALIDATION_COUNT = 32

# What ``export_checkpoint`` yields, in this order: the fp32 export, the int8 file and its
# comparison with fp32 (with int8), the Triton model folder (with a repository).
Step: TypeAlias = "ExportResult | QuantizeResult | Comparison | Path"


class ArgumentError(FCNError):
    """A step refused one of ``export_checkpoint``'s arguments, named by ``argument``
    (``checkpoint``, ``out``, ``shift_and_stitch``, ``calibration``, ``validation``,
    ``int8`` or ``triton``); the message is the step's own."""

    def __init__(self, argument: str, error: Exception) -> None:
        super().__init__(str(error))
        self.argument = argument


@dataclass(frozen=True)
class Int8Options:
    """The images to calibrate int8 on (a data set's split or a plain folder, ``count`` of
    them spread over it) and those to compare it with fp32 on."""

    calibration: Path
    calibration_split: str | None = None  # None: by layout (train; all for images/ + masks/)
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    # None: the calibration folder's val split, or its own images when it has none.
    validation: Path | None = None
    validation_split: str | None = None
    validation_count: int = DEFAULT_VALIDATION_COUNT  # 0: no comparison


@dataclass(frozen=True)
class TritonOptions:
    """Where and how to place the exported file in a Triton model repository."""

    repository: Path
    name: str = DEFAULT_NAME
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # 0: no batching
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    instance: str = "auto"  # a key of model.export.triton.INSTANCE_KINDS


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
    shift_and_stitch: int = 1,
    verify: bool = True,
    int8: Int8Options | None = None,
    triton: TritonOptions | None = None,
    note: str = "",
) -> Iterator[Step]:
    """Export ``checkpoint`` to ``out``, yielding each result as it is written (``Step``).

    The int8 images and the checkpoint are read before any export work. The fp32 graph is
    verified against PyTorch unless not ``verify``; with ``int8`` it goes to a scratch
    file, the quantizer's input and the comparison's reference only, and the int8 file
    takes ``out``. Each file takes its place only once whole and checked, so an error leaves
    it as it was. Raises ``VerificationError`` (nothing written), ``ArgumentError`` naming
    the argument at fault, or any other ``FCNError``. ``note`` is the file's ``fcn.note``.
    """
    images = None if int8 is None else _int8_images(int8)
    loaded = _load(checkpoint)
    target = Path(out)
    with contextlib.ExitStack() as stack:
        fp32_out = target
        if images is not None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="fcn-export-"))
            fp32_out = Path(scratch) / "fp32.onnx"
        fp32 = _export(
            loaded,
            fp32_out,
            fp16=fp16,
            with_confidence=with_confidence,
            with_scores=with_scores,
            opset=opset,
            shift_and_stitch=shift_and_stitch,
            verify=verify,
            note=note,
        )
        yield fp32
        if images is not None:
            from model.export.quantize import QuantizeError, compare, quantize_file

            calibration, validation = images
            try:
                quantized = quantize_file(fp32.path, target, calibration)
            except QuantizeError as exc:
                raise ArgumentError("int8", exc) from exc
            yield quantized
            if validation is not None:
                yield compare(fp32.path, quantized.path, validation)
    if triton is not None:
        try:
            model_dir = write_triton_repository(
                target,
                triton.repository,
                name=triton.name,
                max_batch_size=triton.max_batch_size,
                max_queue_delay_us=triton.max_queue_delay_us,
                instance=triton.instance,
            )
        except TritonError as exc:
            raise ArgumentError("triton", exc) from exc
        yield model_dir


def _int8_images(options: Int8Options) -> tuple[ImageSet, ImageSet | None]:
    """The calibration images and those to compare on (None: no comparison)."""
    from model.data.datasets import DataError
    from model.export.quantize import CALIBRATION_SPLITS, VALIDATION_SPLITS, image_set

    try:
        calibration = image_set(
            options.calibration,
            split=options.calibration_split,
            count=options.calibration_count,
            default_splits=CALIBRATION_SPLITS,
        )
    except DataError as exc:
        raise ArgumentError("calibration", exc) from exc
    if options.validation_count == 0:
        return calibration, None
    try:
        validation = image_set(
            options.calibration if options.validation is None else options.validation,
            split=options.validation_split,
            count=options.validation_count,
            default_splits=VALIDATION_SPLITS,
        )
    except DataError as exc:
        if options.validation is not None:
            raise ArgumentError("validation", exc) from exc
        # The calibration folder has no val split (or is a plain folder): its own images.
        validation = calibration
    return calibration, validation


def _load(path: str | os.PathLike[str]) -> Checkpoint:
    from model.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise ArgumentError("checkpoint", exc) from exc


def _export(
    checkpoint: Checkpoint,
    out: Path,
    *,
    fp16: bool,
    with_confidence: bool,
    with_scores: bool,
    opset: int | None,
    shift_and_stitch: int,
    verify: bool,
    note: str = "",
) -> ExportResult:
    """The checkpoint's net to ``out``, under shift-and-stitch when asked (verified against
    that wrapped net then)."""
    from model.export.exporter import OutputPathError, export_model, export_net
    from model.export.graph import checkpoint_card
    from model.nets.shift_stitch import ShiftStitchError
    from model.nets.shift_stitch import shift_and_stitch as stitched

    factor = shift_and_stitch
    try:
        if factor == 1:
            return export_model(
                checkpoint,
                out,
                fp16=fp16,
                with_confidence=with_confidence,
                with_scores=with_scores,
                opset=opset,
                verify=verify,
                note=note,
            )
        try:
            net = stitched(checkpoint.build_model(), factor)
        except ShiftStitchError as exc:
            raise ArgumentError("shift_and_stitch", exc) from exc
        return export_net(
            net,
            replace(checkpoint_card(checkpoint), note=note),
            out,
            fp16=fp16,
            with_confidence=with_confidence,
            with_scores=with_scores,
            opset=opset,
            verify=verify,
            subject=f"the checkpoint's net under shift-and-stitch {factor}",
        )
    except OutputPathError as exc:
        raise ArgumentError("out", exc) from exc
