"""``fcn predict``: label-map PNGs, overlays and confidence maps for images, from a
checkpoint or ONNX file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.decode import DEFAULT_MAX_PIXELS
from contract.encode import DEFAULT_ALPHA
from contract.tiling import DEFAULT_MAX_MODEL_PIXELS
from contract.tiling import DEFAULT_OVERLAP as DEFAULT_TILE_OVERLAP
from model.cli import CLIError, check_output_folder
from model.commands.arguments import (
    add_device_arguments,
    add_runtime_arguments,
    add_tiling_arguments,
)
from model.commands.eval import add_shift_and_stitch_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE|DIR", help="images or folders of images"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        metavar="MODEL",
        help="a checkpoint (.pt) or an exported model (.onnx)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--overlay", action=argparse.BooleanOptionalAction, default=True,
        help="also write STEM_overlay.jpg (default: yes)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="overlay opacity of the colours"
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="also write STEM_confidence.png: grey, the top class's probability x 255 "
        "(an ONNX file needs its 'confidence' output)",
    )
    parser.add_argument(
        "--legend",
        action="store_true",
        help="draw a strip below each overlay naming its classes, in their colours",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images of more than N pixels, width x height (default: %(default)s, "
        "the service's FCN_MAX_PIXELS)",
    )
    add_device_arguments(parser)
    add_runtime_arguments(parser)
    add_tiling_arguments(parser, DEFAULT_MAX_MODEL_PIXELS)
    add_shift_and_stitch_argument(parser)


def run(args: argparse.Namespace) -> int:
    from model.evaluation.predict import predict
    from model.evaluation.predictors import PredictError

    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.max_image_pixels < 1:
        raise CLIError(f"--max-image-pixels must be 1 or more, got {args.max_image_pixels}")
    if args.legend and not args.overlay:
        raise CLIError("--legend is drawn on overlays: drop --no-overlay")
    check_output_folder(args.out)
    unreadable: list[PredictError] = []

    def skip(exc: PredictError) -> None:  # one bad photo does not stop a folder of them
        print(f"fcn predict: skipped {exc}", file=sys.stderr)
        unreadable.append(exc)

    written = predict(
        args.checkpoint,
        args.inputs,
        args.out,
        overlays=args.overlay,
        alpha=args.alpha,
        legend=args.legend,
        device=args.device,
        amp=args.amp,
        tile_size=args.tile_size,
        tile_overlap=DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap,
        max_model_pixels=args.max_model_pixels,
        max_image_pixels=args.max_image_pixels,
        on_unreadable=skip,
        shift_and_stitch=args.shift_and_stitch,
        runtime=args.runtime,
        precision=args.precision,
        confidence=args.confidence,
    )
    maps = f"{len(written)} label map{'s' if len(written) != 1 else ''}"
    if not unreadable:
        print(f"wrote {maps} to {args.out}")
        return 0
    where = f" to {args.out}" if written else ""
    print(f"wrote {maps}{where}; {len(unreadable)} image(s) unreadable, skipped (above)")
    return 1
