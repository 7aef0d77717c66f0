"""Flags several commands share."""

from __future__ import annotations

import argparse

from model.devices import AMP_MODES


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` as ``fcn eval`` and ``fcn predict`` take them."""
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument("--amp", default="none", choices=AMP_MODES, help="mixed precision on CUDA")
