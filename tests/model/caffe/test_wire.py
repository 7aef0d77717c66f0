"""The protobuf wire format under the .caffemodel reader: every wire type stepped over,
values located and read, and any cut or foreign byte a clear error naming the file."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from model.caffe.caffemodel import CaffeModelError, read_caffemodel
from model.caffe.wire import FIXED32, VARINT, WireError, WireReader, read_segment
from tests.model.caffe import caffe_writer as cw


def reader(data: bytes, path: Path) -> WireReader:
    path.write_bytes(data)
    return WireReader(io.BytesIO(data), path, len(data))


def test_varints_groups_and_int64_as_protobuf_encodes_them(tmp_path: Path) -> None:
    data = (
        cw.key(1, VARINT) + cw.varint(-1)  # int64 -1: ten bytes of two's complement
        + cw.key(2, cw.START_GROUP) + cw.key(1, VARINT) + cw.varint(300)
        + cw.key(2, cw.END_GROUP)
        + cw.key(3, VARINT) + cw.varint(150)
    )  # fmt: skip
    wire = reader(data, tmp_path / "w.bin")
    read: list[tuple[int, int]] = []
    for field, kind in wire.fields(len(data)):
        if field == 2:
            wire.skip(field, kind, len(data))
        else:
            read.append((field, wire.int64(len(data))))
    assert read == [(1, -1), (3, 150)]
    bad = cw.key(2, cw.START_GROUP) + cw.key(4, cw.END_GROUP)
    wire = reader(bad, tmp_path / "bad.bin")
    field, kind = next(wire.fields(len(bad)))
    with pytest.raises(WireError, match=r"bad\.bin: not a readable Caffe model: group 2 closed"):
        wire.skip(field, kind, len(bad))


def test_values_one_field_each_are_located_as_one_run_and_read(tmp_path: Path) -> None:
    values = [1.5, -2.0, 3.25]
    data = b"".join(cw.key(5, FIXED32) + struct.pack("<f", v) for v in values)
    data += cw.key(6, VARINT) + cw.varint(7)  # another field ends the run
    wire = reader(data, tmp_path / "run.bin")
    field, kind = next(wire.fields(len(data)))
    segment = wire.values(field, kind, len(data), "<f4")
    assert (segment.offset, segment.count, segment.packed) == (0, 3, False)
    assert next(wire.fields(len(data))) == (6, VARINT)
    out = np.empty(3, dtype=np.float32)
    with open(tmp_path / "run.bin", "rb", buffering=0) as f:
        read_segment(f, segment, out, tmp_path / "run.bin")
    assert out.tolist() == values


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
def test_unknown_fields_of_every_wire_type_are_skipped(tmp_path: Path, v1: bool) -> None:
    # Groups, fixed64, fixed32, varints and strings at every level; diffs; values split
    # over two fields, one field per value.
    layers = cw.small_net(seed=1)
    encoding = cw.BlobEncoding(packed=False, split=True, extras=True)
    path = tmp_path / "net.caffemodel"
    cw.write(path, cw.net(layers, v1=v1, encoding=encoding))
    read = read_caffemodel(path)
    assert [layer.name for layer in read] == [layer.name for layer in layers]
    for spec, layer in zip(layers, read, strict=True):
        for values, blob in zip(spec.blobs, layer.blobs, strict=True):
            assert blob.shape == values.shape
            assert np.array_equal(blob.read(), values)


def test_every_truncation_is_a_clear_error_or_a_shorter_net(tmp_path: Path) -> None:
    data = cw.to_bytes(cw.net(cw.small_net(), encoding=cw.BlobEncoding()))
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data)
    complete = len(cw.small_net())
    errors = []
    for cut in range(len(data) - 1, 0, -1):
        os.truncate(path, cut)
        try:
            read = read_caffemodel(path)
        except CaffeModelError as exc:
            errors.append(str(exc))
            continue
        assert len(read) < complete  # cut between two layers: the layers before it, whole
    assert all(message.startswith(f"{path}: ") for message in errors)
    assert len(errors) > 0.9 * len(data)
    path.write_bytes(data[: len(data) // 2])  # inside fc6's values
    with pytest.raises(
        CaffeModelError, match=r"truncated \(an incomplete download\?\): .* the file ends at byte"
    ):
        read_caffemodel(path)


def test_files_of_other_formats_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeModelError, match="no layers found"):
        read_caffemodel(empty)
    checkpoint = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, checkpoint)
    with pytest.raises(CaffeModelError, match=r"model\.pt: not a readable Caffe model"):
        read_caffemodel(checkpoint)
    with pytest.raises(CaffeModelError, match="cannot open"):
        read_caffemodel(tmp_path)
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.caffemodel"
    for _ in range(20):
        noise.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CaffeModelError, match=r"noise\.caffemodel"):
            read_caffemodel(noise)
