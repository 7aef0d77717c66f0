"""``fcn pretrained``: a published trained FCN, by name, to a verified ONNX file to serve.

Its weights are fetched once into the cache (resumed if cut, checked by digest), converted
and exported; ``--list`` shows the names. Only the export imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import CLIError, check_hex_digest, check_output_folder
from model.zoo.download import DIGEST_HEX_DIGITS, cache_dir
from model.zoo.pretrained import MIRROR_VARIABLE, Exported, cached, export_pretrained
from model.zoo.registry import MODELS, Pretrained, lookup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", metavar="NAME", help=f"the model to make: {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the models, their figures and the cache"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write DIR/NAME.onnx (the folder is made)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="where downloads are kept (default: $FCN_CACHE, else $XDG_CACHE_HOME/fcn, "
        "else ~/.cache/fcn)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help=f"fetch URL/FILE instead of the publisher's URL (default: ${MIRROR_VARIABLE})",
    )
    digest = parser.add_mutually_exclusive_group()
    digest.add_argument(
        "--sha1", metavar="HEX", help="refuse the weights unless their SHA1 is this"
    )
    digest.add_argument(
        "--sha256", metavar="HEX", help="refuse the weights unless their SHA256 is this"
    )
    parser.add_argument(
        "--force", action="store_true", help="make DIR/NAME.onnx again even if it is up to date"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check of the ONNX file against PyTorch (it runs by default)",
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(listing(args.cache))
        return 0
    if args.name is None:
        raise CLIError("give a model NAME (fcn pretrained --list shows them) or --list")
    lookup(args.name)  # an unknown name fails first
    if args.out is None:
        raise CLIError("--out DIR is required: the folder to write NAME.onnx in")
    check_hex_digest("--sha1", args.sha1, DIGEST_HEX_DIGITS["sha1"])
    check_hex_digest("--sha256", args.sha256, DIGEST_HEX_DIGITS["sha256"])
    out = check_output_folder(args.out)
    result = export_pretrained(
        args.name,
        out,
        cache=args.cache,
        mirror=args.mirror,
        sha1=args.sha1,
        sha256=args.sha256,
        force=args.force,
        verify=not args.no_verify,
    )
    print(report(result))
    return 0


def report(result: Exported) -> str:
    """What was done, where the weights came from, their figures and how to serve it."""
    entry, weights = result.entry, result.weights
    lines = []
    if weights is None:
        lines.append(f"{result.path} is up to date ({entry.file_name}); --force makes it again")
    else:
        if weights.checked.startswith("SHA1 "):
            check = f"{weights.checked} ok"
        elif weights.checked:
            check = f"{weights.checked} ok (SHA1 {weights.sha1})"
        else:
            check = f"no published digest, checked by conversion (SHA1 {weights.sha1})"
        lines.append(f"{weights.path}: {check}, from {weights.url}")
        size = result.path.stat().st_size / 2**20
        lines.append(f"wrote {result.path} ({size:,.0f} MiB): {entry.summary}")
    if entry.metrics:
        lines.append(f"published: {figures(entry)} on {entry.metrics_on}")
    elif entry.metrics_on:
        lines.append(f"published: {entry.metrics_on}")
    lines.append(f"serve it: FCN_MODEL_PATH={result.path} make serve")
    return "\n".join(lines)


def figures(entry: Pretrained) -> str:
    """The published figures in percent, as papers give them: ``mean IU 65.5``."""
    names = {
        "mean_iu": "mean IU",
        "pixel_accuracy": "pixel accuracy",
        "mean_accuracy": "mean accuracy",
        "frequency_weighted_iu": "f.w. IU",
        "geometric_accuracy": "geom. acc.",
    }
    return ", ".join(
        f"{names.get(key, key)} {100 * value:.1f}" for key, value in entry.metrics.items()
    )


def listing(cache: Path | None) -> str:
    """The models as a table, with whether each one's weights are in the cache."""
    folder = cache if cache is not None else cache_dir()
    rows = [("NAME", "NETWORK", "PUBLISHED", "WEIGHTS", "CHECKED BY", "CACHED")]
    for entry in MODELS.values():
        rows.append(
            (
                entry.name,
                entry.arch,
                figures(entry) or "-",
                f"{entry.size_mib} MiB",
                "SHA1" if entry.sha1 else "SHA256 prefix" if entry.sha256 else "conversion",
                "yes" if cached(entry, folder) else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"cache: {folder}")
    return "\n".join(line.rstrip() for line in lines)
