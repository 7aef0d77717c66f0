"""``fcn eval``: the four metrics of a checkpoint or ONNX model on a data set, per class too."""

from __future__ import annotations

import argparse
from pathlib import Path

from contract.tiling import DEFAULT_OVERLAP as DEFAULT_TILE_OVERLAP
from model.cli import CLIError, check_output_folder
from model.commands.arguments import add_device_arguments, add_tiling_arguments
from model.names import DATA_FORMATS as FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint (.pt), or exported model (.onnx, run on ONNX Runtime), to evaluate",
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="data folder (VOC, SBD or folder layout)"
    )
    parser.add_argument("--split", default="val", help="split list to evaluate (default: val)")
    parser.add_argument(
        "--format", default="auto", choices=FORMATS, help="data layout (default: auto)"
    )
    parser.add_argument("--out", type=Path, help="write metrics.json and confusion.png here")
    parser.add_argument(
        "--predictions", action="store_true", help="also write predicted label PNGs"
    )
    parser.add_argument(
        "--overlays", action="store_true", help="also write image/prediction overlays"
    )
    add_device_arguments(parser)
    add_tiling_arguments(parser, None)
    parser.add_argument(
        "--workers", type=int, default=2, help="data loading processes (default: 2)"
    )


def run(args: argparse.Namespace) -> int:
    from model.evaluation.evaluate import class_table, evaluate, format_summary

    if (args.predictions or args.overlays) and args.out is None:
        raise CLIError("--predictions and --overlays need --out DIR")
    if args.workers < 0:
        raise CLIError(f"--workers must be 0 or more, got {args.workers}")
    tiled = bool(args.tile_size) or args.max_model_pixels is not None
    if args.tile_overlap is not None and not tiled:
        raise CLIError("--tile-overlap needs --tile-size or --max-model-pixels")
    if args.out is not None:
        check_output_folder(args.out)
    result = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        data_format=args.format,
        out=args.out,
        save_predictions=args.predictions,
        overlays=args.overlays,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        tile_size=args.tile_size,
        tile_overlap=DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap,
        max_model_pixels=args.max_model_pixels,
    )
    print(f"{args.checkpoint} on {args.data} ({args.split}, {result.images} images)")
    print(format_summary(result.metrics))
    print(class_table(result.metrics, result.classes, result.confusion))
    if args.out is not None:
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'confusion.png'}")
    return 0
