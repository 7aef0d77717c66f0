"""The ``fcn`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its command runs or help is asked for, so ``fcn --help`` stays quick.
Every user-facing error (``model.errors.FCNError``, or a package of an extra that is not
installed) is reported here, once, as one line.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.distribution import version
from model.errors import FCNError
from model.files import check_folder

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert-caffe": (
        "model.commands.convert_caffe",
        "convert a reference Caffe FCN to a checkpoint",
    ),
    "export": ("model.commands.export", "export a checkpoint to a verified ONNX model (+ Triton)"),
    "verify-onnx": ("model.commands.verify_onnx", "check an ONNX model against its checkpoint"),
    "data": ("model.commands.data", "check a data set, or write a synthetic one in VOC's layout"),
    "train": (
        "model.commands.train",
        "train an FCN (SGD, the paper's solver; torchrun for many GPUs)",
    ),
    "eval": (
        "model.commands.eval",
        "a checkpoint's four metrics, per-class IoU and confusion matrix",
    ),
    "predict": ("model.commands.predict", "label-map PNGs and overlays for images"),
    "segment": (
        "model.commands.segment",
        "a folder of images through a running service (POST /segment)",
    ),
    "info": (
        "model.commands.info",
        "what a checkpoint or ONNX file holds: network, classes, preprocessing, metrics",
    ),
    "pretrained": (
        "model.commands.pretrained",
        "a published trained FCN, by name, to a verified ONNX model (--list)",
    ),
}


# A package a command may import, and the extra of this project that installs it.
EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxscript": "train",
    "scipy": "train",
    "matplotlib": "train",
    "yaml": "train",
    "onnxruntime": "serve",
    "httpx": "client",
    "tqdm": "client",
}


class CLIError(FCNError):
    """A bad flag, file or value; the message names it. Exit status 2."""


def check_output_folder(path: Path, flag: str = "--out") -> Path:
    """Refuse, before any work is done, an output folder that cannot be made or written."""
    try:
        check_folder(path)
    except OSError as exc:
        raise CLIError(f"{flag} {path}: {exc}") from exc
    return path


def check_hex_digest(flag: str, value: str | None, digits: int) -> None:
    """Refuse a digest flag's value that is not ``digits`` hex digits (None: not given)."""
    if value is not None and not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value):
        raise CLIError(f"{flag} {value!r}: expected {digits} hex digits")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn", description="Fully Convolutional Networks for semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"fcn {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Import only the module of the command being run (none for top-level help).
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if wanted == name:
            importlib.import_module(module_name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args))
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package not in EXTRAS:  # not an extra's package: a bug, keep the traceback
            raise
        extra = EXTRAS[package]
        install = f"pip install 'fcn-segmentation[{extra}]'"
        checkout = f"pip install -e '.[{extra}]'"
        return _error(
            args.command,
            f"needs {package}, which the '{extra}' extra installs: {install} "
            f"(from a checkout: {checkout})",
        )
    except FCNError as exc:
        return _error(args.command, str(exc))
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        return _error(args.command, f"{exc.filename}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print(f"fcn {args.command}: interrupted", file=sys.stderr)
        return 130


def _error(command: str, message: str) -> int:
    print(f"fcn {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # ``python -m model.cli``: run the importable module, whose CLIError subcommands raise.
    from model.cli import main as cli_main

    sys.exit(cli_main())
