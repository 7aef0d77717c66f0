"""The .caffemodel reader: every encoding Caffe wrote (layer, V1 and V0 layers; BlobShape or
legacy dims; packed or one field per value; floats or doubles), read value for value."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.caffe.caffemodel import CaffeModelError, read_caffemodel
from tests.model.caffe import caffe_writer as cw


def stored_shape(values: np.ndarray, legacy: bool) -> tuple[int, ...]:
    return (1,) * (4 - values.ndim) + values.shape if legacy else values.shape


def write_file(path: Path, layers: list[cw.Layer], v1: bool, encoding: cw.BlobEncoding) -> Path:
    cw.write(path, cw.net(layers, v1=v1, encoding=encoding))
    return path


def test_reads_hand_assembled_layer_v1_and_v0_layers(tmp_path: Path) -> None:
    # Field numbers spelled out byte by byte from caffe.proto, independent of the writer.
    blob = (
        b"\x2a\x08" + struct.pack("<2f", 1.5, -2.0)  # data (5), packed: 8 bytes
        + b"\x3a\x04\x0a\x02\x01\x02"  # shape (7): BlobShape { dim (1) packed [1, 2] }
    )  # fmt: skip
    layer = b"\x0a\x01c" + b"\x12\x0bConvolution" + b"\x3a" + bytes([len(blob)]) + blob
    modern = b"\xa2\x06" + bytes([len(layer)]) + layer  # NetParameter.layer: field 100
    legacy_blob = (
        b"\x08\x01\x10\x01\x18\x01\x20\x02"  # num, channels, height, width: 1, 1, 1, 2
        + b"\x2a\x08" + struct.pack("<2f", 1.5, -2.0)
    )  # fmt: skip
    v1_layer = b"\x22\x01c" + b"\x28\x04" + b"\x32" + bytes([len(legacy_blob)]) + legacy_blob
    legacy = b"\x12" + bytes([len(v1_layer)]) + v1_layer  # NetParameter.layers: field 2
    # The oldest nets: V1LayerParameter.layer (1) holds a V0LayerParameter with the name (1),
    # the type as a string (2) and the blobs (50).
    v0_layer = b"\x0a\x01c" + b"\x12\x0bConvolution" + b"\x92\x03" + bytes([len(blob)]) + blob
    v0_in_v1 = b"\x0a" + bytes([len(v0_layer)]) + v0_layer
    oldest = b"\x12" + bytes([len(v0_in_v1)]) + v0_in_v1
    for data, shape in ((modern, (1, 2)), (legacy, (1, 1, 1, 2)), (oldest, (1, 2))):
        path = tmp_path / "net.caffemodel"
        path.write_bytes(data)
        [read] = read_caffemodel(path)
        assert (read.name, read.type) == ("c", "Convolution")
        assert read.blobs[0].shape == shape
        assert read.blobs[0].read().reshape(-1).tolist() == [1.5, -2.0]


def protobuf_classes(packed: bool) -> dict[str, Any]:
    """caffe.proto's messages (the fields the reader uses) built at run time, so the
    official protobuf library can encode reference files without compiled protos."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"caffe_{packed}.proto", package="caffe", syntax="proto2"
    )
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name: str, *fields: tuple[str, int, int, int, str, bool]) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, is_packed in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".caffe.{type_name}"
            if is_packed:
                f.options.packed = True

    int64, string, msg = field.TYPE_INT64, field.TYPE_STRING, field.TYPE_MESSAGE
    message("BlobShape", ("dim", 1, int64, repeated, "", True))
    message(
        "BlobProto",
        *[(n, i, int64, optional, "", False) for i, n in enumerate(("num", "channels"), 1)],
        *[(n, i, int64, optional, "", False) for i, n in enumerate(("height", "width"), 3)],
        ("data", 5, field.TYPE_FLOAT, repeated, "", packed),
        ("shape", 7, msg, optional, "BlobShape", False),
        ("double_data", 8, field.TYPE_DOUBLE, repeated, "", packed),
    )
    message(
        "LayerParameter",
        ("name", 1, string, optional, "", False),
        ("type", 2, string, optional, "", False),
        ("blobs", 7, msg, repeated, "BlobProto", False),
    )
    message(
        "V1LayerParameter",
        ("name", 4, string, optional, "", False),
        ("type", 5, field.TYPE_INT32, optional, "", False),  # an enum on the wire
        ("blobs", 6, msg, repeated, "BlobProto", False),
    )
    message(
        "NetParameter",
        ("name", 1, string, optional, "", False),
        ("layers", 2, msg, repeated, "V1LayerParameter", False),
        ("layer", 100, msg, repeated, "LayerParameter", False),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{m.name}"))
        for m in proto.message_type
    }


ENCODINGS = {
    "blobshape": cw.BlobEncoding(),
    "legacy-dims": cw.BlobEncoding(legacy_shape=True),
    "unpacked": cw.BlobEncoding(packed=False),
    "double": cw.BlobEncoding(double=True),
    "unpacked-double-legacy": cw.BlobEncoding(packed=False, double=True, legacy_shape=True),
}


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_protobuf_library_files_read_exactly(tmp_path: Path, name: str, v1: bool) -> None:
    """Files encoded by the protobuf library itself read back exactly, and the test
    writer produces the very same bytes (so its files stand for real ones)."""
    encoding = ENCODINGS[name]
    classes = protobuf_classes(encoding.packed)
    layers = cw.small_net()
    net = classes["NetParameter"](name="FCN")
    for spec in layers:
        layer = net.layers.add() if v1 else net.layer.add()
        layer.name = spec.name
        layer.type = cw.V1_TYPE_CODES.get(spec.type, 0) if v1 else spec.type
        for values in spec.blobs:
            blob = layer.blobs.add()
            if encoding.legacy_shape:
                shape = stored_shape(values, legacy=True)
                blob.num, blob.channels, blob.height, blob.width = shape
            else:
                blob.shape.dim.extend(values.shape)
            target = blob.double_data if encoding.double else blob.data
            target.extend(values.reshape(-1).tolist())
    data = net.SerializeToString()
    assert cw.to_bytes(cw.net(layers, v1=v1, encoding=encoding)) == data

    path = tmp_path / "net.caffemodel"
    path.write_bytes(data)
    read = read_caffemodel(path)
    assert [layer.name for layer in read] == [layer.name for layer in layers]
    for spec, layer in zip(layers, read, strict=True):
        if not v1 or spec.type in cw.V1_TYPE_CODES:
            assert layer.type == spec.type
        assert [b.shape for b in layer.blobs] == [
            stored_shape(v, encoding.legacy_shape) for v in spec.blobs
        ]
        for values, blob in zip(spec.blobs, layer.blobs, strict=True):
            assert np.array_equal(blob.read().reshape(values.shape), values)


def test_blob_reads_into_given_memory(tmp_path: Path) -> None:
    layers = cw.small_net()
    read = read_caffemodel(write_file(tmp_path / "n.caffemodel", layers, False, cw.BlobEncoding()))
    fc6 = read[3].blobs[0]
    weight = torch.empty(5, 4, 7, 7)
    fc6.read(out=weight.numpy())
    assert torch.equal(weight, torch.from_numpy(layers[3].blobs[0]).reshape(5, 4, 7, 7))
    with pytest.raises(ValueError, match="980 values"):
        fc6.read(out=np.empty(10, dtype=np.float32))


def test_shape_and_value_count_must_agree(tmp_path: Path) -> None:
    blob = b"\x2a\x08" + struct.pack("<2f", 1.0, 2.0) + b"\x3a\x03\x0a\x01\x03"  # 2 values, [3]
    layer = b"\x0a\x05conv1" + b"\x3a" + bytes([len(blob)]) + blob
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(b"\xa2\x06" + bytes([len(layer)]) + layer)
    with pytest.raises(CaffeModelError, match=r"layer 'conv1' blob 0: shape \[3\] .* 2 values"):
        read_caffemodel(path)


def test_blob_stored_twice_over_reads_as_caffe_reads_it(tmp_path: Path) -> None:
    # Blob::FromProto: the legacy dims win over BlobShape, double_data over data.
    blob = (
        b"\x08\x01\x10\x01\x18\x02\x20\x01"  # num, channels, height, width: 1, 1, 2, 1
        + b"\x2a\x08" + struct.pack("<2f", 1.0, 2.0)  # data
        + b"\x3a\x03\x0a\x01\x02"  # shape [2]
        + b"\x42\x10" + struct.pack("<2d", 3.0, 4.0)  # double_data (8)
    )  # fmt: skip
    layer = b"\x0a\x05conv1" + b"\x3a" + bytes([len(blob)]) + blob
    path = tmp_path / "twice.caffemodel"
    path.write_bytes(b"\xa2\x06" + bytes([len(layer)]) + layer)
    [read] = read_caffemodel(path)
    assert read.blobs[0].shape == (1, 1, 2, 1)
    assert read.blobs[0].read().reshape(-1).tolist() == [3.0, 4.0]
