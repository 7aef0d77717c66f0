"""``fcn export``: a checkpoint to a verified schema-1 ONNX file, optionally in a Triton
model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

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
        "--no-verify",
        action="store_true",
        help="skip the check against PyTorch (it runs by default and guards --out)",
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


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.export.exporter import OutputPathError, VerificationError, export_model

    _check_flags(args)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise CLIError(f"--checkpoint {exc}") from exc
    try:
        result = export_model(
            checkpoint,
            args.out,
            fp16=args.fp16,
            with_scores=args.with_scores,
            opset=args.opset,
            verify=not args.no_verify,
        )
    except VerificationError as exc:
        print(exc.report)
        print(f"fcn export: {args.out} not written: the exported graph failed verification")
        return 1
    except OutputPathError as exc:
        raise CLIError(f"--out {exc}") from exc

    if result.report is not None:
        print(result.report)
    else:
        print(f"{result.path}: not verified (--no-verify)")
    size_mb = result.size_bytes / 1e6
    print(f"wrote {result.path} ({size_mb:.1f} MB) in {result.export_seconds:.1f} s")
    if args.triton_repo is not None:
        try:
            model_dir = write_triton_repository(
                result.path,
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
