"""The Triton repository: config.pbtxt parses as Triton's ModelConfig and describes exactly
the ONNX graph's inputs and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from model.export.triton import TritonError, write_triton_repository
from tests.factory import exported

FieldType = descriptor_pb2.FieldDescriptorProto
# Triton's DataType names for the element types the contract uses.
TRITON_NAMES = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
}

# inference.DataType in number order (TYPE_INVALID = 0 ... TYPE_BF16 = 14).
DATA_TYPE_NAMES = (
    "INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "STRING", "BF16",
)  # fmt: skip


def model_config_class() -> Any:
    """The part of Triton's ``inference.ModelConfig`` (model_config.proto) we write, built
    by hand so that text_format rejects any field name, enum value or type Triton would."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="model_config_subset.proto", package="inference", syntax="proto3"
    )
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPE_NAMES):
        data_type.value.add(name=f"TYPE_{name}", number=number)

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name

    one, many = FieldType.LABEL_OPTIONAL, FieldType.LABEL_REPEATED
    message(
        "ModelInput",
        ("name", 1, FieldType.TYPE_STRING, one, ""),
        ("data_type", 2, FieldType.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 4, FieldType.TYPE_INT64, many, ""),
    )
    message(
        "ModelOutput",
        ("name", 1, FieldType.TYPE_STRING, one, ""),
        ("data_type", 2, FieldType.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 3, FieldType.TYPE_INT64, many, ""),
    )
    message(
        "ModelDynamicBatching",
        ("preferred_batch_size", 1, FieldType.TYPE_INT32, many, ""),
        ("max_queue_delay_microseconds", 2, FieldType.TYPE_UINT64, one, ""),
    )
    group = proto.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    group.field.add(name="name", number=1, type=FieldType.TYPE_STRING, label=one)
    group.field.add(name="count", number=2, type=FieldType.TYPE_INT32, label=one)
    group.field.add(
        name="kind",
        number=4,
        type=FieldType.TYPE_ENUM,
        label=one,
        type_name=".inference.ModelInstanceGroup.Kind",
    )
    message(
        "ModelConfig",
        ("name", 1, FieldType.TYPE_STRING, one, ""),
        ("platform", 2, FieldType.TYPE_STRING, one, ""),
        ("max_batch_size", 4, FieldType.TYPE_INT32, one, ""),
        ("input", 5, FieldType.TYPE_MESSAGE, many, ".inference.ModelInput"),
        ("output", 6, FieldType.TYPE_MESSAGE, many, ".inference.ModelOutput"),
        ("instance_group", 7, FieldType.TYPE_MESSAGE, many, ".inference.ModelInstanceGroup"),
        ("dynamic_batching", 11, FieldType.TYPE_MESSAGE, one, ".inference.ModelDynamicBatching"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


MODEL_CONFIG = model_config_class()
DATA_TYPES = MODEL_CONFIG.DESCRIPTOR.file.enum_types_by_name["DataType"]


def parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(), MODEL_CONFIG())


def graph_tensors(values: Any) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims with -1 for symbolic ones) straight from the ONNX graph."""
    tensors = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        tensors.append((value.name, TRITON_NAMES[tensor.elem_type], dims))
    return tensors


def config_tensors(entries: Any) -> list[tuple[str, str, list[int]]]:
    return [(e.name, DATA_TYPES.values_by_number[e.data_type].name, list(e.dims)) for e in entries]


def test_the_parser_rejects_what_triton_would() -> None:
    with pytest.raises(text_format.ParseError, match="data_typ"):
        text_format.Parse('input [ { name: "image" data_typ: TYPE_UINT8 } ]', MODEL_CONFIG())
    with pytest.raises(text_format.ParseError, match="TYPE_U8"):
        text_format.Parse('input [ { name: "image" data_type: TYPE_U8 } ]', MODEL_CONFIG())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "max_batch_size"),
    [
        ({"arch": "fcn8s"}, 8),
        ({"arch": "fcn8s", "with_scores": True}, 3),
        ({"arch": "fcn8s", "fp16": True}, 8),
        ({"arch": "fcn8s", "num_classes": 256}, 8),
        ({"arch": "fcn8s", "with_scores": True}, 0),
        ({"arch": "fcn8s", "confidence": False}, 8),
    ],
    ids=["labels", "scores", "fp16", "int32-labels", "no-batching", "no-confidence"],
)
def test_config_names_types_and_dims_match_the_onnx_graph(
    tmp_path: Path, variant: dict[str, Any], max_batch_size: int
) -> None:
    _, path = exported(**variant)
    model_dir = write_triton_repository(
        path, tmp_path / "repo", name="fcn", max_batch_size=max_batch_size
    )
    config = parse(model_dir / "config.pbtxt")
    assert (config.name, config.platform) == ("fcn", "onnxruntime_onnx")
    assert config.max_batch_size == max_batch_size
    graph = onnx.load(path).graph
    inputs, outputs = graph_tensors(graph.input), graph_tensors(graph.output)
    if max_batch_size > 0:
        # Triton prepends the batch dimension itself.
        assert all(dims[0] == -1 for _, _, dims in inputs + outputs)
        inputs = [(n, t, dims[1:]) for n, t, dims in inputs]
        outputs = [(n, t, dims[1:]) for n, t, dims in outputs]
        assert config.HasField("dynamic_batching")
    else:
        assert not config.HasField("dynamic_batching")
    assert config_tensors(config.input) == inputs
    assert config_tensors(config.output) == outputs
    declared = [name for name, _, _ in config_tensors(config.output)]
    assert ("confidence" in declared) == variant.get("confidence", True)
    assert config_tensors(config.input)[0][1:] == (
        ("TYPE_UINT8", [-1, -1, 3]) if max_batch_size else ("TYPE_UINT8", [-1, -1, -1, 3])
    )


def test_repository_layout_holds_the_same_loadable_model(tmp_path: Path) -> None:
    _, path = exported("fcn8s")
    model_dir = write_triton_repository(
        path, tmp_path / "models", name="fcn8s-voc", instance="gpu", max_queue_delay_us=500
    )
    assert model_dir == tmp_path / "models" / "fcn8s-voc"
    assert sorted(p.name for p in model_dir.rglob("*")) == ["1", "config.pbtxt", "model.onnx"]
    copied = model_dir / "1" / "model.onnx"
    assert copied.read_bytes() == path.read_bytes()
    ort.InferenceSession(copied, providers=["CPUExecutionProvider"])
    config = parse(model_dir / "config.pbtxt")
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    kinds = MODEL_CONFIG.DESCRIPTOR.file.message_types_by_name["ModelInstanceGroup"]
    assert kinds.enum_types_by_name["Kind"].values_by_number[group.kind].name == "KIND_GPU"
    assert group.count == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a/b"}, "model name 'a/b'"),
        ({"name": ".hidden"}, "model name '.hidden'"),
        ({"max_batch_size": -1}, "max_batch_size must be 0 or more"),
        ({"instance": "tpu"}, "instance must be one of"),
    ],
)
def test_bad_settings_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    _, path = exported("fcn8s")
    with pytest.raises(TritonError, match=message):
        write_triton_repository(path, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TritonError, match="nope.onnx: no such model file"):
        write_triton_repository(tmp_path / "nope.onnx", tmp_path / "repo")
