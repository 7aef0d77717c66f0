"""A Triton Inference Server model repository for an exported model.

``DIR/<name>/1/model.onnx`` plus a ``config.pbtxt`` read off the ONNX graph itself
(platform ``onnxruntime_onnx``, -1 for dynamic dims, ``max_batch_size``, dynamic batching),
so the file the service runs scales out on Triton unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from contract.schema import MetadataError
from model.errors import FCNError
from model.files import atomic_path

if TYPE_CHECKING:  # onnx is imported where used: `fcn export --help` stays quick
    import onnx

PLATFORM = "onnxruntime_onnx"
CONFIG = "config.pbtxt"
MODEL_FILE = "model.onnx"
DEFAULT_NAME = "fcn"
DEFAULT_MAX_BATCH_SIZE = 8
# How long Triton's dynamic batcher holds a request for others of the same shape.
DEFAULT_MAX_QUEUE_DELAY_US = 2000
# ONNX element type (``TensorProto.DataType`` name) -> Triton ``DataType`` (model_config.proto).
TRITON_TYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
}
# --triton-instance -> ModelInstanceGroup.Kind; "auto" leaves it to Triton (GPU if any).
INSTANCE_KINDS = {"auto": None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# Triton model names become folder names and URL path segments.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class TritonError(FCNError, ValueError):
    """A repository that cannot be written as asked; the message names the path or value."""


@dataclass(frozen=True)
class TensorConfig:
    """One ``input``/``output`` entry: Triton's name, data type and dims (-1 when dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def tensor_configs(
    model: onnx.ModelProto, max_batch_size: int
) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """The graph's inputs and outputs as Triton sees them.

    With ``max_batch_size > 0`` Triton adds the batch dimension itself, so it is left out.
    """
    import onnx

    initializers = {init.name for init in model.graph.initializer}

    def convert(values: Sequence[onnx.ValueInfoProto]) -> list[TensorConfig]:
        configs = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
            if kind not in TRITON_TYPES:
                raise TritonError(f"{value.name!r}: no Triton data type for {kind}")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            if max_batch_size > 0:
                if not dims or dims[0] != -1:
                    raise TritonError(
                        f"{value.name!r} has no dynamic batch dimension; use max_batch_size 0"
                    )
                dims = dims[1:]
            configs.append(TensorConfig(value.name, TRITON_TYPES[kind], tuple(dims)))
        return configs

    return convert(model.graph.input), convert(model.graph.output)


def _tensor_block(field: str, tensors: list[TensorConfig]) -> list[str]:
    lines = [f"{field} ["]
    for i, tensor in enumerate(tensors):
        dims = ", ".join(str(d) for d in tensor.dims)
        lines += [
            "  {",
            f'    name: "{tensor.name}"',
            f"    data_type: {tensor.data_type}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    return [*lines, "]"]


def triton_config(
    model: onnx.ModelProto,
    *,
    name: str = DEFAULT_NAME,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    instance: str = "auto",
    instance_count: int = 1,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    if max_batch_size < 0:
        raise TritonError(f"max_batch_size must be 0 or more, got {max_batch_size}")
    if instance not in INSTANCE_KINDS:
        raise TritonError(f"instance must be one of {', '.join(INSTANCE_KINDS)}, got {instance!r}")
    if instance_count < 1:
        raise TritonError(f"instance_count must be at least 1, got {instance_count}")
    inputs, outputs = tensor_configs(model, max_batch_size)
    lines = [
        "# Triton model configuration written by `fcn export` from the ONNX graph.",
        f'name: "{name}"',
        f'platform: "{PLATFORM}"',
        f"max_batch_size: {max_batch_size}",
        *_tensor_block("input", inputs),
        *_tensor_block("output", outputs),
    ]
    if max_batch_size > 0:
        # Triton batches only requests of equal H x W, as the contract's service does.
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {max_queue_delay_us}",
            "}",
        ]
    kind = INSTANCE_KINDS[instance]
    if kind is not None:
        lines += [
            "instance_group [",
            "  {",
            f"    kind: {kind}",
            f"    count: {instance_count}",
            "  }",
            "]",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    model_path: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str],
    *,
    name: str = DEFAULT_NAME,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    instance: str = "auto",
    instance_count: int = 1,
    version: int = 1,
) -> Path:
    """Copy the model to ``repo_dir/name/version/model.onnx`` beside its ``config.pbtxt``.

    Returns the model's folder (``repo_dir/name``). Each file is written atomically.
    """
    source = Path(model_path)
    if not NAME_PATTERN.fullmatch(name):
        raise TritonError(f"model name {name!r}: use letters, digits, '_', '.' and '-'")
    if version < 1:
        raise TritonError(f"version must be 1 or more, got {version}")
    try:
        from model.export.metadata import load_model

        model = load_model(source)
    except MetadataError as exc:
        raise TritonError(str(exc)) from exc
    config = triton_config(
        model,
        name=name,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instance=instance,
        instance_count=instance_count,
    )
    del model
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(version_dir / MODEL_FILE) as tmp:
            shutil.copyfile(source, tmp)
        with atomic_path(model_dir / CONFIG) as tmp:
            tmp.write_text(config)
    except OSError as exc:
        raise TritonError(
            f"{repo_dir}: cannot write the Triton repository ({exc.strerror or exc}"
            + (f": {exc.filename})" if exc.filename else ")")
        ) from exc
    return model_dir
