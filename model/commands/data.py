"""``fcn data``: check a data set (``check``), write the synthetic one (``synth``), or
download VOC2012 / SBD with torchvision's downloaders (``download``)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from model.names import DATA_FORMATS as FORMATS

# model.data.synthetic.LAYOUTS, here so that --help never imports numpy.
SYNTH_LAYOUTS = ("voc", "context", "siftflow", "nyud")


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) as (H, W)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not HxW, e.g. 128x128")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    text = "report missing, unreadable, mis-sized or mislabelled files"
    p = sub.add_parser("check", help=text, description=text)
    p.add_argument(
        "root",
        type=Path,
        metavar="DIR",
        help="data folder (VOC, SBD, images/ + masks/, PASCAL-Context, SIFT Flow or NYUDv2)",
    )
    p.add_argument("--format", default="auto", choices=FORMATS, help="layout (default: detected)")
    p.add_argument(
        "--split", action="append", dest="splits", help="split to check (repeatable; default: all)"
    )
    p.add_argument("--workers", type=int, default=4, help="reading threads (default: 4)")

    text = "write a synthetic data set in PASCAL VOC's layout (or another's)"
    p = sub.add_parser("synth", help=text, description=text)
    p.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    p.add_argument(
        "--layout",
        default="voc",
        choices=SYNTH_LAYOUTS,
        help="the data set whose files to write: voc, or the reference's PASCAL-Context, "
        "SIFT Flow or NYUDv2 (default: voc)",
    )
    p.add_argument("--train", type=int, default=300, help="training images (default: 300)")
    p.add_argument(
        "--val", type=int, default=100, help="validation images, 1 or more (default: 100)"
    )
    p.add_argument("--size", default="128x128", help="image size HxW (default: 128x128)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same files (default: 0)")
    p.add_argument(
        "--band", type=int, default=1, help="255 band on boundaries, pixels each side (default: 1)"
    )

    text = "download VOC2012 or SBD (needs internet)"
    p = sub.add_parser("download", help=text, description=text)
    p.add_argument("dataset", choices=("voc", "sbd"))
    p.add_argument("--root", type=Path, required=True, help="folder to download into")


def run(args: argparse.Namespace) -> int:
    from model.cli import CLIError, check_output_folder
    from model.data.checks import check_splits, format_problems
    from model.data.download import download_sbd, download_voc

    if args.action == "check":
        if args.workers < 1:
            raise CLIError(f"--workers must be at least 1, got {args.workers}")
        datasets, problems = check_splits(args.root, args.format, args.splits, args.workers)
        for dataset in datasets:
            print(f"{dataset.describe()}: {dataset.num_classes} classes")
        if problems:
            print(format_problems(problems, limit=200))
            print(f"{len(problems)} problem(s) found")
            return 1
        print("no problems found")
        return 0
    if args.action == "synth":
        from tqdm import tqdm

        from model.data.synthetic import write_synthetic

        try:
            size = parse_size(args.size)
        except ValueError as exc:
            raise CLIError(f"--size: {exc}") from exc
        for flag, value, least in (("--train", args.train, 1), ("--val", args.val, 1)):
            if value < least:
                raise CLIError(f"{flag} {value}: must be at least {least}")
        if args.band < 0:
            raise CLIError(f"--band {args.band}: must be 0 or more")
        check_output_folder(args.out)
        with tqdm(total=args.train + args.val, unit="img", disable=None, leave=False) as bar:

            def advance(count: int) -> None:
                bar.update(count)

            try:
                out = write_synthetic(
                    args.out,
                    args.train,
                    args.val,
                    size,
                    seed=args.seed,
                    band=args.band,
                    progress=advance,
                    layout=args.layout,
                )
            except FileExistsError as exc:
                raise CLIError(f"--out: {exc}") from exc
            except OSError as exc:
                raise CLIError(
                    f"--out {args.out}: cannot write in {args.out.parent} ({exc.strerror or exc})"
                ) from exc
        voc_like = args.layout in ("voc", "context")
        first, second = ("train", "val") if voc_like else ("trainval", "test")
        print(
            f"wrote {args.train} {first} + {args.val} {second} images ({size[0]}x{size[1]}) "
            f"to {out}"
        )
        return 0
    try:
        where = download_voc(args.root) if args.dataset == "voc" else download_sbd(args.root)
    except (OSError, RuntimeError) as exc:
        raise CLIError(f"download of {args.dataset} into {args.root} failed: {exc}") from exc
    print(f"{args.dataset} is in {where}")
    return 0
