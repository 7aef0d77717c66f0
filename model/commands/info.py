"""``fcn info FILE``: what a checkpoint or an ONNX model file holds, without running it.

The network, its classes and colours, the preprocessing, the figures recorded with it and,
for a checkpoint, its training config and progress; for an ONNX file, the contract's
metadata, tensors and where published weights came from. ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model.cli import CLIError

# An ONNX file is a ModelProto, whose first field (ir_version, 1, varint) starts it: 0x08.
ONNX_FIRST_BYTE = b"\x08"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="a checkpoint (.pt) or .onnx file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    with open(path, "rb") as f:
        is_onnx = path.suffix.lower() == ".onnx" or f.read(1) == ONNX_FIRST_BYTE
    info = onnx_info(path) if is_onnx else checkpoint_info(path)
    print(json.dumps(info, indent=2) if args.json else text(info))
    return 0


def onnx_info(path: Path) -> dict[str, Any]:
    """The contract's view of an ONNX file (weights not loaded)."""
    from contract.schema import MetadataError
    from model.export.metadata import load_model, model_metadata

    try:
        model = load_model(path)
        meta = model_metadata(model, str(path))
    except MetadataError as exc:
        raise CLIError(str(exc)) from exc
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    tensors = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }
    return {
        "file": str(path),
        "kind": "onnx",
        "size_bytes": path.stat().st_size,
        **meta.to_dict(),
        "opset": opsets.get("ai.onnx"),
        "tensors": tensors,
    }


def checkpoint_info(path: Path) -> dict[str, Any]:
    """What a checkpoint records (its weights counted, not listed)."""
    from model.checkpoint import load_checkpoint
    from model.nets.base import network_tiling

    checkpoint = load_checkpoint(path)
    spec = checkpoint.spec
    return {
        "file": str(path),
        "kind": "checkpoint",
        "size_bytes": path.stat().st_size,
        "arch": spec.arch,
        "backbone": spec.backbone,
        "width": spec.width,
        "classes": list(checkpoint.classes),
        "palette": [list(c) for c in checkpoint.palette[: spec.num_classes]],
        "ignore_index": checkpoint.ignore_index,
        "dataset": checkpoint.dataset,
        "metrics": checkpoint.metrics,
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "tiling": network_tiling(spec.arch, spec.backbone).to_dict(),
        "parameters": sum(t.numel() for t in checkpoint.state_dict.values()),
        "iteration": checkpoint.iteration,
        "resumable": checkpoint.training_state is not None,
        "config": checkpoint.config,
    }


def text(info: dict[str, Any]) -> str:
    """The same as ``--json``, for a reader: one line per field, lists shortened."""
    lines = [f"{info['file']}: {describe(info)}"]
    if info.get("note"):
        lines.append(f"note: {info['note']}")
    classes = info["classes"]
    lines.append(f"classes ({len(classes)}): {', '.join(classes)}")
    geometry = info.get("geometry_classes")
    if geometry:  # a two-head file's second output (``?output=geometry`` when served)
        lines.append(f"geometry output ({len(geometry)}): {', '.join(geometry)}")
    pre = info.get("preprocessing") or {}
    if pre:
        lines.append(
            f"preprocessing: {pre.get('channel_order', '?')}, scale {pre.get('scale', 1)}, "
            f"mean {pre.get('mean')}, std {pre.get('std')}"
        )
    metrics = info.get("metrics") or {}
    lines.append(
        "metrics: " + (", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "none recorded")
    )
    for key, value in (info.get("origin") or {}).items():
        lines.append(f"origin.{key}: {value}")
    tiling = info["tiling"]
    lines.append(f"tiling: align {tiling['align']}, context {tiling['context']}")
    if info["kind"] == "onnx":
        shapes = ", ".join(f"{name} {dims}" for name, dims in info["tensors"].items())
        lines.append(f"tensors: {shapes}; opset {info['opset']}; created {info['created']}")
    else:
        state = "resumable" if info["resumable"] else "weights only"
        lines.append(f"training: iteration {info['iteration']} ({state})")
        for key, value in info["config"].items():
            lines.append(f"config.{key}: {json.dumps(value)}")
    return "\n".join(lines)


def describe(info: dict[str, Any]) -> str:
    """``fcn8s (vgg16, width 1.0), 21 classes, voc; checkpoint, 134,489,759 weights``."""
    head = (
        f"{info['arch']} ({info['backbone']}, width {info['width']}), "
        f"{len(info['classes'])} classes, {info['dataset'] or 'no data set recorded'}"
    )
    if info["kind"] == "onnx":
        quantized = info.get("quantization") or {}
        # An int8 file's fcn.precision is its float tensors' type; its weights are int8.
        precision = f"int8 ({quantized.get('format', '?')})" if quantized else info["precision"]
        return f"{head}; ONNX schema {info['schema']}, {precision}, {mib(info)}"
    return f"{head}; checkpoint, {info['parameters']:,} weights, {mib(info)}"


def mib(info: dict[str, Any]) -> str:
    return f"{info['size_bytes'] / 2**20:,.1f} MiB"
