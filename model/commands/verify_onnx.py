"""``fcn verify-onnx``: check an exported model against its checkpoint (ONNX checker, the
contract, the file on ONNX Runtime or OpenVINO (CPU) against PyTorch); exit status 1 when it
fails."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import CLIError
from model.commands.arguments import add_runtime_arguments
from model.names import VERIFY_CASES as DEFAULT_CASES


def _case(text: str) -> tuple[int, int, int]:
    """``NxHxW`` (or ``HxW`` for a batch of 1) -> (N, H, W)."""
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) == 2:
        values = (1, *values)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxHxW or HxW, positive integers")
    return values[0], values[1], values[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the exported model")
    parser.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CKPT", help="the weights it came from"
    )
    default = " ".join("x".join(map(str, c)) for c in DEFAULT_CASES)
    parser.add_argument(
        "--case",
        dest="cases",
        type=_case,
        action="append",
        metavar="NxHxW",
        help=f"a batch to compare (repeatable; default {default})",
    )
    # The export's own check: ONNX Runtime at fp32 unless asked (auto chooses as the service).
    add_runtime_arguments(parser, default="onnxruntime")


def run(args: argparse.Namespace) -> int:
    from contract.runtimes import RuntimeChoiceError, choose
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.export.verify import verify_onnx

    if not args.model.is_file():
        raise CLIError(f"{args.model}: no such model file")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise CLIError(f"--checkpoint {exc}") from exc
    try:
        choice = choose(args.runtime, args.precision, gpu=False)  # it compares on the CPU
    except RuntimeChoiceError as exc:
        raise CLIError(f"--{exc.setting} {exc.value}: {exc}") from None
    report = verify_onnx(
        args.model,
        checkpoint,
        cases=args.cases or DEFAULT_CASES,
        runtime=choice.runtime,
        compute=choice.precision,
    )
    print(report)
    return 0 if report.passed else 1
