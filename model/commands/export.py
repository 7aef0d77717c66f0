"""``fcn export``: a checkpoint to a verified schema-1 ONNX file, optionally quantized to
int8 on calibration images, optionally in a Triton model repository."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import CLIError, check_output_folder
from model.export.pipeline import (
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_VALIDATION_COUNT,
    ArgumentError,
    Int8Options,
    TritonOptions,
    export_checkpoint,
)
from model.export.triton import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_NAME,
    INSTANCE_KINDS,
    NAME_PATTERN,
)
from model.names import MIN_OPSET

if TYPE_CHECKING:
    from model.export.pipeline import Step

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
        "--no-confidence",
        action="store_true",
        help="leave out the 'confidence' output (the top class's probability x 255, uint8, "
        "computed in the graph; written by default)",
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
        "--note",
        default="",
        metavar="TEXT",
        help="one line users see with the model (/v1/model, the page, fcn info), e.g. what "
        "it cannot do: 'synthetic shapes only; for photos serve voc-fcn8s'",
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
    from contract.schema import note_problem

    problem = note_problem(args.note)
    if problem:
        raise CLIError(f"--note {problem}")
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


def _int8_options(args: argparse.Namespace) -> Int8Options | None:
    """The int8 flags given, by the options' names (the same); the rest take its defaults."""
    if not args.int8:
        return None
    return Int8Options(**_given({name: getattr(args, name) for name in INT8_FLAGS}))


def _triton_options(args: argparse.Namespace) -> TritonOptions | None:
    if args.triton_repo is None:
        return None
    flags = {
        "name": args.triton_name,
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "instance": args.triton_instance,
    }
    return TritonOptions(args.triton_repo, **_given(flags))


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    from model.export.exporter import VerificationError

    _check_flags(args)
    steps = export_checkpoint(
        args.checkpoint,
        args.out,
        fp16=args.fp16,
        with_confidence=not args.no_confidence,
        with_scores=args.with_scores,
        opset=args.opset,
        shift_and_stitch=args.shift_and_stitch,
        verify=not args.no_verify,
        int8=_int8_options(args),
        triton=_triton_options(args),
        note=args.note,
    )
    flags = {
        "checkpoint": "--checkpoint",
        "out": "--out",
        "shift_and_stitch": f"--shift-and-stitch {args.shift_and_stitch}:",
        "calibration": "--calibration",
        "validation": "--validation",
        "int8": "--int8",
        "triton": "--triton-repo",
    }
    try:
        for step in steps:
            print(_describe(step, args))
    except ArgumentError as exc:
        raise CLIError(f"{flags[exc.argument]} {exc}") from exc
    except VerificationError as exc:
        print(exc.report)
        print(f"fcn export: {args.out} not written: the exported graph failed verification")
        return 1
    return 0


def _describe(step: Step, args: argparse.Namespace) -> str:
    """What one step of the export wrote, as printed."""
    from model.export.exporter import ExportResult

    if isinstance(step, ExportResult):
        lines = []
        if step.report is None:
            lines.append(f"{args.out}: not verified (--no-verify)")
        elif args.int8:  # name the file the user asked for, not the scratch one
            lines.append(str(replace(step.report, model=Path(f"{args.out} (fp32, before int8)"))))
        else:
            lines.append(str(step.report))
        if not args.int8:
            size_mb = step.size_bytes / 1e6
            lines.append(f"wrote {step.path} ({size_mb:.1f} MB) in {step.export_seconds:.1f} s")
        return "\n".join(lines)
    if isinstance(step, Path):
        return f"wrote Triton model {step} (config.pbtxt, 1/model.onnx)"
    from model.export.quantize import QuantizeResult  # only int8 runs get this far

    if isinstance(step, QuantizeResult):
        calibration = step.calibration
        return (
            f"wrote {step.path} (int8, {step.size_bytes / 1e6:.1f} MB, "
            f"fp32 {step.source_bytes / 1e6:.1f} MB) in {step.seconds:.1f} s, calibrated on "
            f"{len(calibration)} images of {calibration.source}"
        )
    return str(step)  # the int8 file compared with fp32
