"""``fcn eval``: the four metrics of a checkpoint or ONNX model on a data set, per class too
(optionally by shift-and-stitch), and how well its confidence is calibrated; with
``--upper-bound``, the paper's Appendix A instead."""

from __future__ import annotations

import argparse
from pathlib import Path

from contract.schema import no_confidence
from contract.tiling import DEFAULT_OVERLAP as DEFAULT_TILE_OVERLAP
from model.cli import CLIError, check_output_folder
from model.commands.arguments import (
    add_device_arguments,
    add_runtime_arguments,
    add_tiling_arguments,
)
from model.names import DATA_FORMATS as FORMATS

# Output strides 32 / F that shift-and-stitch can reach (model.nets.shift_stitch.FACTORS,
# repeated here so that --help imports no torch).
SHIFT_FACTORS = (1, 2, 4, 8, 16, 32)


def add_shift_and_stitch_argument(parser: argparse.ArgumentParser) -> None:
    """``--shift-and-stitch F``, as ``fcn eval`` and ``fcn predict`` take it."""
    parser.add_argument(
        "--shift-and-stitch", type=int, default=1, choices=SHIFT_FACTORS, metavar="F",
        help="run an FCN-32s checkpoint at output stride 32/F by shift-and-stitch (paper "
        "section 3.2, as the rarefied net); F in 1, 2, 4, 8, 16, 32 (default 1: off)",
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
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
    parser.add_argument(
        "--out",
        type=Path,
        help="write metrics.json, confusion.png and reliability.png (calibration) here",
    )
    parser.add_argument(
        "--predictions", action="store_true", help="also write predicted label PNGs"
    )
    parser.add_argument(
        "--overlays", action="store_true", help="also write image/prediction overlays"
    )
    add_device_arguments(parser)
    add_runtime_arguments(parser)
    add_tiling_arguments(parser, None)
    add_shift_and_stitch_argument(parser)
    parser.add_argument(
        "--workers", type=int, default=2, help="data loading processes (default: 2)"
    )
    parser.add_argument(
        "--upper-bound", action="store_true",
        help="no model: the mean IU of the ground truth downsampled by 4 ... 128 (one label "
        "per block) against itself, beside the paper's Appendix A",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="--upper-bound: print JSON")


def run(args: argparse.Namespace) -> int:
    if args.upper_bound:
        return _upper_bound(args)
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import class_table, format_summary

    if args.checkpoint is None:
        raise CLIError("--checkpoint is needed (unless --upper-bound)")
    if args.json:
        raise CLIError("--json goes with --upper-bound")
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
        shift_and_stitch=args.shift_and_stitch,
        runtime=args.runtime,
        precision=args.precision,
    )
    stitched = f", shift-and-stitch {args.shift_and_stitch}" if args.shift_and_stitch > 1 else ""
    print(f"{args.checkpoint}{stitched} on {args.data} ({args.split}, {result.images} images)")
    loss = "" if result.loss is None else f"loss {result.loss:.4g} ({result.loss_mode})  "
    geometry = result.geometric_accuracy
    geometry_text = "" if geometry is None else f"  geom. acc {100 * geometry:.2f}"
    print(loss + format_summary(result.metrics) + geometry_text)
    print(class_table(result.metrics, result.classes, result.confusion))
    if result.calibration is None:
        print(f"calibration: not measured; {no_confidence(str(args.checkpoint))}")
    else:
        print("\n".join(result.calibration.lines()))
    if args.out is not None:
        written = ["metrics.json", "confusion.png"]
        if result.calibration is not None:
            written.append("reliability.png")
        print(f"wrote {', '.join(str(args.out / name) for name in written)}")
    return 0


def _upper_bound(args: argparse.Namespace) -> int:
    """Appendix A on ``--data``: needs nothing but the labels."""
    import json

    from model.data.layouts import open_dataset
    from model.evaluation.upper_bound import PAPER_MEAN_IU, format_upper_bounds, upper_bounds

    if args.checkpoint is not None or args.out is not None:
        raise CLIError("--upper-bound scores the labels alone: drop --checkpoint and --out")
    dataset = open_dataset(args.data, args.split, args.format)
    bounds = upper_bounds(dataset)
    if args.json:
        rows = [
            {"factor": f, "mean_iu": v, "paper_mean_iu": PAPER_MEAN_IU[f] / 100}
            for f, v in bounds.items()
        ]
        print(json.dumps({"data": dataset.describe(), "upper_bound": rows}, indent=2))
        return 0
    print(f"upper bound of mean IU at each output stride (Appendix A): {dataset.describe()}")
    print(format_upper_bounds(bounds))
    return 0
