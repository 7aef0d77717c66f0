"""``fcn convert-caffe``: a reference FCN .caffemodel to a checkpoint, without Caffe.

The checkpoint then evaluates, exports and serves like one this project trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import CLIError, check_hex_digest
from model.names import ARCHS

# The backbones the reference released Caffe FCNs on (model.caffe.convert.CAFFE_BACKBONES).
CAFFE_BACKBONES = ("vgg16", "caffe-alexnet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "weights",
        type=Path,
        metavar="WEIGHTS.caffemodel",
        help="e.g. fcn8s-heavy-pascal.caffemodel, fcn-alexnet-pascal.caffemodel",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHS,
        help="the network the file holds (default: recognised from its layer names)",
    )
    parser.add_argument(
        "--backbone",
        choices=CAFFE_BACKBONES,
        help="the trunk the file's net is built on (default: recognised from its layer names)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="CKPT", help="the checkpoint to write"
    )
    parser.add_argument(
        "--sha1",
        metavar="HEX",
        help="refuse the file unless its SHA1 is this (default: checked for official files "
        "whose SHA1 is known)",
    )


def run(args: argparse.Namespace) -> int:
    from model.caffe.convert import KNOWN_SHA1, check_sha1, convert_caffemodel
    from model.checkpoint import save_checkpoint

    weights: Path = args.weights
    out: Path = args.out
    if not weights.is_file():
        raise CLIError(f"{weights}: no such file")
    check_hex_digest("--sha1", args.sha1, 40)
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: folder {out.parent} does not exist")
    if out.resolve() == weights.resolve():
        raise CLIError(f"--out {out}: would overwrite the weights being converted")

    expected = args.sha1 or KNOWN_SHA1.get(weights.name)
    if expected is not None:
        check_sha1(weights, expected)
        print(f"{weights}: SHA1 {expected.lower()} ok")
    checkpoint = convert_caffemodel(weights, args.arch, backbone=args.backbone)
    try:
        save_checkpoint(checkpoint, out)
    except OSError as exc:
        raise CLIError(
            f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc})"
        ) from exc

    spec = checkpoint.spec
    values = sum(t.numel() for t in checkpoint.state_dict.values())
    mean = ", ".join(str(m) for m in checkpoint.preprocessing.mean)
    print(
        f"wrote {out}: {spec.arch}, {spec.num_classes} classes ({checkpoint.dataset})"
        + (f" and {spec.geometry_classes} geometric" if spec.geometry_classes else "")
        + ", "
        f"{values:,} weights on {spec.backbone}; input BGR 0-255 minus ({mean})"
    )
    return 0
