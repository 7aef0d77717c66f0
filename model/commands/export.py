"""``fcn export``: a checkpoint to a verified schema-1 ONNX file, optionally quantized to
int8 on calibration images, optionally in a Triton model repository."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from model.cli import CLIError, check_output_folder
from model.export.triton import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_NAME,
    INSTANCE_KINDS,
    NAME_PATTERN,
    TritonError,
    write_triton_repository,
)
from model.names import MIN_OPSET

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint
    from model.export.exporter import ExportResult
    from model.export.quantize import ImageSet

DEFAULT_CALIBRATION_COUNT = 32
DEFAULT_VALIDATION_COUNT = 32
INT8_FLAGS = (
    "calibration",
    "calibration_split",
    "calibration_count",
    "validation",
    "validation_split",
    "validation_count",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CKPT", help="checkpoint to export"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="MODEL.onnx", help="the ONNX file to write"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="float16 weights and compute (for GPUs)"
    )
    parser.add_argument(
        "--with-scores", action="store_true", help="also output float32 logits 'scores'"
    )
    parser.add_argument(
        "--opset",
        type=int,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET} to the newest the installed onnx knows "
        "(default: torch.onnx's own, 20 in torch 2.14)",
    )
    parser.add_argument(
        "--shift-and-stitch",
        type=int,
        default=1,
        metavar="F",
        help="an FCN-32s's dense output at stride 32/F (paper, section 3.2; F divides 32), "
        "by filter rarefaction: about F^2 times the work of one pass (default 1: off)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check against PyTorch (it runs by default and guards --out)",
    )
    int8 = parser.add_argument_group("int8 (CPU inference)")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="write a statically quantized int8 model (QDQ; fast on CPUs with VNNI); "
        "needs --calibration",
    )
    int8.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="images to calibrate on: a data set (VOC, SBD, images/ + masks/) or a folder",
    )
    int8.add_argument(
        "--calibration-split",
        metavar="SPLIT",
        help="split of a data set to calibrate on (default: train; all for images/ + masks/)",
    )
    int8.add_argument(
        "--calibration-count",
        type=int,
        metavar="N",
        help=f"images to calibrate on, spread over the set (default {DEFAULT_CALIBRATION_COUNT})",
    )
    int8.add_argument(
        "--validation",
        type=Path,
        metavar="DIR",
        help="images to compare int8 with fp32 on, with mean IU when labelled "
        "(default: the --calibration folder, its val split when it has one)",
    )
    int8.add_argument(
        "--validation-split",
        metavar="SPLIT",
        help="split of the validation data set (default: val; all for images/ + masks/)",
    )
    int8.add_argument(
        "--validation-count",
        type=int,
        metavar="N",
        help=f"images to compare on (default {DEFAULT_VALIDATION_COUNT}; 0: skip the comparison)",
    )
    triton = parser.add_argument_group("Triton Inference Server")
    triton.add_argument(
        "--triton-repo", type=Path, metavar="DIR", help="also write DIR/NAME/1/model.onnx"
    )
    triton.add_argument(
        "--triton-name", metavar="NAME", help=f"model name (default {DEFAULT_NAME})"
    )
    triton.add_argument(
        "--max-batch-size",
        type=int,
        metavar="N",
        help=f"Triton max_batch_size (default {DEFAULT_MAX_BATCH_SIZE}; 0: no batching)",
    )
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help=f"dynamic batching delay (default {DEFAULT_MAX_QUEUE_DELAY_US})",
    )
    triton.add_argument(
        "--triton-instance",
        choices=list(INSTANCE_KINDS),
        help="instance kind (default auto: GPU when Triton has one)",
    )


def _check_flags(args: argparse.Namespace) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if args.opset is not None and not MIN_OPSET <= args.opset <= newest:
        raise CLIError(f"--opset {args.opset}: use {MIN_OPSET} to {newest}")
    _check_int8_flags(args)
    from model.nets.shift_stitch import ShiftStitchError, check_factor

    try:
        check_factor(args.shift_and_stitch)
    except ShiftStitchError as exc:
        raise CLIError(f"--shift-and-stitch {args.shift_and_stitch}: {exc}") from exc
    triton_flags = {
        "--triton-name": args.triton_name,
        "--max-batch-size": args.max_batch_size,
        "--max-queue-delay-us": args.max_queue_delay_us,
        "--triton-instance": args.triton_instance,
    }
    if args.triton_repo is None:
        given = [flag for flag, value in triton_flags.items() if value is not None]
        if given:
            raise CLIError(f"{', '.join(given)}: only with --triton-repo DIR")
        return
    if args.triton_name is not None and not NAME_PATTERN.fullmatch(args.triton_name):
        raise CLIError(f"--triton-name {args.triton_name!r}: use letters, digits, '_', '.', '-'")
    if args.max_batch_size is not None and args.max_batch_size < 0:
        raise CLIError(f"--max-batch-size {args.max_batch_size}: must be 0 or more")
    if args.max_queue_delay_us is not None and args.max_queue_delay_us < 0:
        raise CLIError(f"--max-queue-delay-us {args.max_queue_delay_us}: must be 0 or more")
    # Before the export, so that a repository that cannot be written costs no work.
    check_output_folder(args.triton_repo, "--triton-repo")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int8_flags(args: argparse.Namespace) -> None:
    given = [_flag(name) for name in INT8_FLAGS if getattr(args, name) is not None]
    if not args.int8:
        if given:
            raise CLIError(f"{', '.join(given)}: only with --int8")
        return
    if args.calibration is None:
        raise CLIError("--int8 needs --calibration DIR (images to set the int8 ranges on)")
    if args.fp16:
        raise CLIError("--int8 and --fp16: choose one (int8 starts from the fp32 graph)")
    if args.calibration_count is not None and args.calibration_count < 1:
        raise CLIError(f"--calibration-count {args.calibration_count}: must be 1 or more")
    if args.validation_count is not None and args.validation_count < 0:
        raise CLIError(f"--validation-count {args.validation_count}: must be 0 or more")
    if args.validation is None and args.validation_split is not None:
        raise CLIError("--validation-split: only with --validation DIR")
    # Quantizing writes --out last, after minutes of work at full width: check it first.
    folder = args.out.parent if str(args.out.parent) else Path(".")
    if args.out.is_dir():
        raise CLIError(f"--out {args.out}: is a folder; give the path of the .onnx file to write")
    if not folder.is_dir():
        raise CLIError(f"--out {args.out}: folder {folder} does not exist")
    check_output_folder(folder, "--out")


def _int8_images(args: argparse.Namespace) -> tuple[ImageSet, ImageSet | None]:
    """The calibration images and those to compare on (None: no comparison), or CLIError
    naming the flag whose folder cannot be used; before any export work."""
    from model.data.datasets import DataError
    from model.export.quantize import CALIBRATION_SPLITS, VALIDATION_SPLITS, image_set

    try:
        calibration = image_set(
            args.calibration,
            split=args.calibration_split,
            count=args.calibration_count or DEFAULT_CALIBRATION_COUNT,
            default_splits=CALIBRATION_SPLITS,
        )
    except DataError as exc:
        raise CLIError(f"--calibration {exc}") from exc
    count = DEFAULT_VALIDATION_COUNT if args.validation_count is None else args.validation_count
    if count == 0:
        return calibration, None
    flag, folder = "--validation", args.validation
    if folder is None:
        flag, folder = "--calibration", args.calibration
    try:
        validation = image_set(
            folder, split=args.validation_split, count=count, default_splits=VALIDATION_SPLITS
        )
    except DataError as exc:
        if args.validation is not None:
            raise CLIError(f"{flag} {exc}") from exc
        # The calibration folder has no val split (or is a plain folder): its own images.
        validation = calibration
    return calibration, validation


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.export.exporter import OutputPathError, VerificationError

    _check_flags(args)
    images = _int8_images(args) if args.int8 else None
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise CLIError(f"--checkpoint {exc}") from exc
    with contextlib.ExitStack() as stack:
        fp32_out = args.out
        if images is not None:
            # The fp32 export is the quantizer's input and the comparison's reference only.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="fcn-export-"))
            fp32_out = Path(scratch) / "fp32.onnx"
        try:
            result = _export(checkpoint, fp32_out, args)
        except VerificationError as exc:
            print(exc.report)
            print(f"fcn export: {args.out} not written: the exported graph failed verification")
            return 1
        except OutputPathError as exc:
            raise CLIError(f"--out {exc}") from exc

        if result.report is not None:
            report = result.report
            if images is not None:  # name the file the user asked for, not the scratch one
                report = dataclasses.replace(report, model=Path(f"{args.out} (fp32, before int8)"))
            print(report)
        else:
            print(f"{args.out}: not verified (--no-verify)")
        size_mb = result.size_bytes / 1e6
        if images is None:
            print(f"wrote {result.path} ({size_mb:.1f} MB) in {result.export_seconds:.1f} s")
            written = result.path
        else:
            written = _quantize(result.path, args.out, *images)
    if args.triton_repo is not None:
        try:
            model_dir = write_triton_repository(
                written,
                args.triton_repo,
                name=args.triton_name or DEFAULT_NAME,
                max_batch_size=(
                    DEFAULT_MAX_BATCH_SIZE if args.max_batch_size is None else args.max_batch_size
                ),
                max_queue_delay_us=(
                    DEFAULT_MAX_QUEUE_DELAY_US
                    if args.max_queue_delay_us is None
                    else args.max_queue_delay_us
                ),
                instance=args.triton_instance or "auto",
            )
        except TritonError as exc:
            raise CLIError(f"--triton-repo {exc}") from exc
        print(f"wrote Triton model {model_dir} (config.pbtxt, 1/model.onnx)")
    return 0


def _export(checkpoint: Checkpoint, out: Path, args: argparse.Namespace) -> ExportResult:
    """The checkpoint's net to ``out``, under shift-and-stitch when asked (verified against
    that wrapped net then)."""
    from model.export.exporter import export_model, export_net
    from model.export.graph import checkpoint_card
    from model.nets.shift_stitch import ShiftStitchError, shift_and_stitch

    factor = args.shift_and_stitch
    if factor == 1:
        return export_model(
            checkpoint,
            out,
            fp16=args.fp16,
            with_scores=args.with_scores,
            opset=args.opset,
            verify=not args.no_verify,
        )
    try:
        net = shift_and_stitch(checkpoint.build_model(), factor)
    except ShiftStitchError as exc:
        raise CLIError(f"--shift-and-stitch {factor}: {exc}") from exc
    return export_net(
        net,
        checkpoint_card(checkpoint),
        out,
        fp16=args.fp16,
        with_scores=args.with_scores,
        opset=args.opset,
        verify=not args.no_verify,
        subject=f"the checkpoint's net under shift-and-stitch {factor}",
    )


def _quantize(fp32: Path, out: Path, calibration: ImageSet, validation: ImageSet | None) -> Path:
    """Quantize the verified fp32 export onto ``out`` and print how it compares."""
    from model.export.quantize import QuantizeError, compare, quantize_file

    try:
        result = quantize_file(fp32, out, calibration)
    except QuantizeError as exc:
        raise CLIError(f"--int8 {exc}") from exc
    size_mb = result.size_bytes / 1e6
    print(
        f"wrote {result.path} (int8, {size_mb:.1f} MB, fp32 {fp32.stat().st_size / 1e6:.1f} MB) "
        f"in {result.seconds:.1f} s, calibrated on {len(calibration)} images of "
        f"{calibration.source}"
    )
    if validation is not None:
        print(compare(fp32, result.path, validation))
    return result.path
