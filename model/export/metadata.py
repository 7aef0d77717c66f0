"""The schema-1 contract read off an ONNX file with plain ``onnx``: its metadata and tensors,
checked by the rules the service applies at start-up (``contract.schema``)."""

from __future__ import annotations

import os

import onnx

from contract.schema import MetadataError, ModelMetadata, TensorSpec, check_model


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """Graph inputs or outputs as the contract describes them."""
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        )
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


def model_metadata(model: onnx.ModelProto, source: str) -> ModelMetadata:
    """The metadata of a loaded model whose tensors keep the contract, else MetadataError."""
    props = {entry.key: entry.value for entry in model.metadata_props}
    graph = model.graph
    return check_model(
        props, tensor_specs(list(graph.input)), tensor_specs(list(graph.output)), source
    )


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """An ONNX file's graph and metadata (external weights not loaded); MetadataError names
    a file that is missing or not ONNX."""
    source = os.fspath(path)
    try:
        return onnx.load(source, load_external_data=False)
    except FileNotFoundError:
        raise MetadataError(f"{source}: no such model file") from None
    except Exception as exc:
        raise MetadataError(f"{source}: not a readable ONNX file ({exc})") from exc


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and check the contract of an ONNX file (weights not loaded)."""
    return model_metadata(load_model(path), os.fspath(path))
