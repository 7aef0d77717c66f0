"""``fcn segment``: images and folders of them through a running service (``POST /segment``).

Only the client runs here (``client``: httpx, tqdm), imported when the command runs: no
torch, no ONNX Runtime. Exit status 1 when any image failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contract.inputs import InputError
from model.cli import CLIError, check_output_folder

FORMATS = ("png", "overlay", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE|DIR",
        help="images, or folders of them (searched at any depth; OUT keeps their sub-folders)",
    )  # fmt: skip
    parser.add_argument("--url", required=True, help="the service, e.g. http://localhost:8000")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--format", default="png", choices=FORMATS,
        help="png: label map STEM.png (default); overlay: STEM_overlay.png (or .jpg with "
        "--image-format jpeg); json: STEM.json",
    )  # fmt: skip
    parser.add_argument(
        "--output", choices=("labels", "geometry"), default=None,
        help="the map to draw: labels (default), or a two-head model's geometry (sky, "
        "horizontal, vertical), written as STEM_geometry.png, _geometry_overlay or .json",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=None, help="overlay opacity of the colours (0 to 1)"
    )
    parser.add_argument(
        "--image-format", choices=("png", "jpeg"), default=None, help="of overlays (default: png)"
    )
    parser.add_argument(
        "--legend",
        action="store_const",
        const="true",
        default=None,
        help="overlays: a strip below naming the classes present, in their colours",
    )
    parser.add_argument(
        "--max-side", type=int, default=None, metavar="N",
        help="segment at a longest side of N (labels come back at full size)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="requests at once (default: 4)"
    )
    parser.add_argument(
        "--retries", type=int, default=5, metavar="N",
        help="retries of an image refused with 503 (after its Retry-After) or whose connection "
        "failed (default: 5)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="S",
        help="seconds to wait for one answer (default: 60)",
    )  # fmt: skip
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )  # fmt: skip


def check_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Refuse bad flag values, naming the flag; the query they add to every request."""
    if not args.url.startswith(("http://", "https://")):
        raise CLIError(f"--url {args.url!r}: expected http://HOST:PORT or https://...")
    if args.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.retries < 0:
        raise CLIError(f"--retries must be >= 0, got {args.retries}")
    if args.timeout <= 0:
        raise CLIError(f"--timeout must be > 0, got {args.timeout}")
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.max_side is not None and args.max_side < 1:
        raise CLIError(f"--max-side must be >= 1, got {args.max_side}")
    overlay_only = (
        ("--alpha", args.alpha),
        ("--image-format", args.image_format),
        ("--legend", args.legend),
    )
    for flag, value in overlay_only:
        if value is not None and args.format != "overlay":
            raise CLIError(f"{flag} applies to --format overlay only")
    query = {
        "alpha": args.alpha,
        "image_format": args.image_format,
        "legend": args.legend,
        "max_side": args.max_side,
        "output": args.output,
    }
    return {k: v for k, v in query.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    query = check_flags(args)
    check_output_folder(args.out)
    # Without the client extra, model.cli names it (httpx is missing).
    from tqdm import tqdm

    from client import ClientError, Failure, segment_folder

    def report(failure: Failure) -> None:  # as it happens, above the progress bar
        tqdm.write(f"fcn segment: failed {failure}", file=sys.stderr)

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        result = segment_folder(
            args.url,
            args.inputs,
            args.out,
            concurrency=args.concurrency,
            format=args.format,
            query=query,
            progress=progress,
            retries=args.retries,
            timeout_s=args.timeout,
            on_failure=report,
        )
    except InputError as exc:
        raise CLIError(str(exc)) from exc
    except ClientError as exc:  # no service there: nothing was sent or written
        where = "" if exc.status is None else f"{args.url.rstrip('/')}/v1/model: "
        print(f"fcn segment: error: {where}{exc}", file=sys.stderr)
        return 1
    model = result.model
    total = len(result.written) + len(result.failed)
    retried = f"; {result.refused} refusal(s) (503) retried" if result.refused else ""
    print(
        f"segmented {total} image(s) with {model.get('name')} ({model.get('version')}) at "
        f"{args.url}: wrote {len(result.written)} to {args.out}, {len(result.failed)} failed"
        f"{' (above)' if result.failed else ''}{retried}"
    )
    return 1 if result.failed else 0
