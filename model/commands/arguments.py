"""Flags several commands share."""

from __future__ import annotations

import argparse

from contract.runtimes import PRECISIONS, RUNTIMES
from contract.tiling import DEFAULT_OVERLAP as DEFAULT_TILE_OVERLAP
from model.names import AMP_MODES


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` as ``fcn eval`` and ``fcn predict`` take them."""
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument("--amp", default="none", choices=AMP_MODES, help="mixed precision on CUDA")


def add_runtime_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--runtime`` and ``--precision`` of an exported file, chosen as the service chooses
    (FCN_RUNTIME, FCN_PRECISION), so both give the same labels."""
    parser.add_argument(
        "--runtime", default=default, choices=RUNTIMES,
        help=f"what runs an .onnx file: auto (ONNX Runtime on a GPU, else OpenVINO where "
        f"installed, else ONNX Runtime), onnxruntime or openvino (default: {default})",
    )  # fmt: skip
    fp = "auto" if default == "auto" else "fp32"
    parser.add_argument(
        "--precision", default=fp, choices=PRECISIONS,
        help=f"auto (bf16 on OpenVINO where the CPU has it, else fp32), fp32, or bf16 "
        f"(OpenVINO only) (default: {fp})",
    )  # fmt: skip


def add_tiling_arguments(parser: argparse.ArgumentParser, max_model_pixels: int | None) -> None:
    """``--tile-size``, ``--tile-overlap`` and ``--max-model-pixels`` (default
    ``max_model_pixels``; None: images are tiled only when ``--tile-size`` is given)."""
    when = "images past --max-model-pixels" if max_model_pixels else "none"
    parser.add_argument(
        "--tile-size", type=int, default=0, metavar="N",
        help=f"cut every image into tiles of at most N x N pixels (default 0: {when})",
    )  # fmt: skip
    parser.add_argument(
        "--tile-overlap", type=int, default=None, metavar="N",
        help=f"pixels shared by neighbouring tiles (default: {DEFAULT_TILE_OVERLAP}); twice "
        "the model's context (fcn8s: 492) makes tiled labels equal whole-image ones",
    )  # fmt: skip
    limit = f"default: {max_model_pixels:,}" if max_model_pixels else "default: no limit"
    parser.add_argument(
        "--max-model-pixels", type=int, default=max_model_pixels, metavar="N",
        help=f"most (H + 200) x (W + 200) pixels in one pass; larger images are tiled ({limit})",
    )  # fmt: skip
