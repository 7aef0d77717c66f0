"""Caffe's ``.caffemodel`` files read straight from the protobuf wire format, no Caffe needed.

``read_caffemodel`` scans the layer structure (names, types, blob shapes, where each blob's
values lie) without loading any values; ``CaffeBlob.read`` then reads one blob's values
from the file into one float32 array, so peak memory is the weights, not the file twice.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from model.errors import FCNError

# Wire types of the protobuf encoding.
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# Field numbers from BVLC/caffe src/caffe/proto/caffe.proto.
NET_LAYER = 100  # NetParameter.layer: LayerParameter
NET_LAYERS_V1 = 2  # NetParameter.layers (deprecated): V1LayerParameter
V1_V0_LAYER = 1  # V1LayerParameter.layer: V0LayerParameter, the oldest nets
BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # BlobProto num, channels, height, width (int64)
BLOB_DATA = 5  # repeated float, packed
BLOB_SHAPE = 7  # BlobShape
BLOB_DOUBLE_DATA = 8  # repeated double, packed
SHAPE_DIM = 1  # BlobShape.dim: repeated int64, packed

# V1LayerParameter.LayerType values of the layers VGG16 and FCNs use.
V1_LAYER_TYPES = {
    4: "Convolution", 14: "InnerProduct", 39: "Deconvolution", 5: "Data", 6: "Dropout",
    17: "Pooling", 18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss",
}  # fmt: skip

# A layer name longer than this means we are not reading a Caffe file.
MAX_NAME_BYTES = 4096
# Values per read when a blob cannot be read straight into its array (doubles, unpacked).
CHUNK_VALUES = 1 << 20


class CaffeModelError(FCNError, ValueError):
    """A .caffemodel that cannot be read or does not fit; the message names the file."""


@dataclass(frozen=True)
class _LayerFields:
    """Where one generation of Caffe's layer message keeps the name, the type and the blobs."""

    name: int
    type: int
    blobs: int
    type_is_enum: bool


LAYER_FIELDS = _LayerFields(name=1, type=2, blobs=7, type_is_enum=False)  # LayerParameter
V1_FIELDS = _LayerFields(name=4, type=5, blobs=6, type_is_enum=True)  # V1LayerParameter
V0_FIELDS = _LayerFields(name=1, type=2, blobs=50, type_is_enum=False)  # V0LayerParameter


@dataclass(frozen=True)
class _Segment:
    """A run of values in the file: packed (``stride`` = item size) or one field per value
    (``stride`` = 1 + item size, ``offset`` at the first value's one-byte key)."""

    offset: int
    count: int
    dtype: str  # "<f4" or "<f8"
    stride: int

    @property
    def packed(self) -> bool:
        return self.stride == np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class CaffeBlob:
    """One parameter blob: its shape as stored and where its values lie in ``path``."""

    path: Path
    shape: tuple[int, ...]
    segments: tuple[_Segment, ...]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.segments)

    @property
    def offset(self) -> int:
        """Byte offset of the first value, for reading blobs in file order."""
        return self.segments[0].offset if self.segments else 0

    def read(self, out: np.ndarray | None = None) -> np.ndarray:
        """The values as float32 in ``shape``, or written into ``out`` (C-contiguous float32
        of the same size, any shape) and ``out`` returned."""
        if out is None:
            out = np.empty(self.shape, dtype=np.float32)
        elif out.dtype != np.float32 or out.size != self.count or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous float32 with {self.count} values, got "
                f"{out.dtype} {out.shape}"
            )
        flat = out.reshape(-1)
        try:
            with open(self.path, "rb", buffering=0) as f:
                start = 0
                for segment in self.segments:
                    _read_segment(f, segment, flat[start : start + segment.count], self.path)
                    start += segment.count
        except OSError as exc:
            raise CaffeModelError(f"{self.path}: cannot read ({exc})") from exc
        return out


@dataclass(frozen=True)
class CaffeLayer:
    """A layer as stored: its name, its type (``Convolution``, ...) and its blobs."""

    name: str
    type: str
    blobs: tuple[CaffeBlob, ...]


def read_caffemodel(path: str | os.PathLike[str]) -> list[CaffeLayer]:
    """The layers of a .caffemodel in file order (``layer`` or legacy ``layers`` encoding).

    Reads the structure only; blob values stay in the file until ``CaffeBlob.read``.
    """
    source = Path(path)
    try:
        f = open(source, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise CaffeModelError(f"{source}: cannot open ({exc.strerror or exc})") from exc
    with f:
        scanner = _Scanner(f, source, os.fstat(f.fileno()).st_size)
        layers = scanner.net()
    if not layers:
        raise CaffeModelError(f"{source}: no layers found: not a Caffe model file")
    return layers


class _Scanner:
    """Walks the wire format with seeks, reading keys, lengths, names and shapes only."""

    def __init__(self, f: BinaryIO, path: Path, size: int):
        self.f = f
        self.path = path
        self.size = size
        self.pos = 0
        self.key_start = 0
        self.context = "the net"

    # -- errors ---------------------------------------------------------------------------

    def fail(self, problem: str) -> NoReturn:
        raise CaffeModelError(
            f"{self.path}: not a readable Caffe model: {problem} in {self.context} "
            f"at byte {self.pos}"
        )

    def advance(self, n: int, end: int, what: str) -> int:
        """Check that ``n`` bytes of ``what`` fit before ``end``; return where they end."""
        stop = self.pos + n
        if stop > end:
            if stop > self.size:
                raise CaffeModelError(
                    f"{self.path}: truncated (an incomplete download?): {what} in "
                    f"{self.context} at byte {self.pos} needs {n} bytes, the file ends at "
                    f"byte {self.size}"
                )
            self.fail(f"{what} of {n} bytes runs past its message")
        return stop

    # -- primitives -----------------------------------------------------------------------

    def seek(self, pos: int) -> None:
        self.pos = pos
        self.f.seek(pos)

    def read(self, n: int, end: int, what: str) -> bytes:
        self.advance(n, end, what)
        data = self.f.read(n)
        if len(data) != n:
            raise CaffeModelError(f"{self.path}: the file changed while being read")
        self.pos += n
        return data

    def varint(self, end: int) -> int:
        result = shift = 0
        while True:
            byte = self.read(1, end, "a varint")[0]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
            if shift >= 70:
                self.fail("a varint longer than 10 bytes")

    def int64(self, end: int) -> int:
        value = self.varint(end)
        return value - (1 << 64) if value >= 1 << 63 else value

    def length(self, end: int) -> int:
        """Read a length prefix; return where the value it announces ends."""
        n = self.varint(end)
        return self.advance(n, end, "a length-delimited field")

    def fields(self, end: int) -> Iterator[tuple[int, int]]:
        """Yield (field number, wire type) until ``end``; the caller consumes each value."""
        while self.pos < end:
            self.key_start = self.pos
            key = self.varint(end)
            field, wire = key >> 3, key & 7
            if field == 0:
                self.fail("field number 0")
            yield field, wire

    def skip(self, field: int, wire: int, end: int) -> None:
        """Step over one value of any wire type, groups included."""
        if wire == VARINT:
            self.varint(end)
        elif wire == FIXED64:
            self.seek(self.advance(8, end, "a fixed64 value"))
        elif wire == LENGTH_DELIMITED:
            self.seek(self.length(end))
        elif wire == FIXED32:
            self.seek(self.advance(4, end, "a fixed32 value"))
        elif wire == START_GROUP:
            for inner, inner_wire in self.fields(end):
                if inner_wire == END_GROUP:
                    if inner != field:
                        self.fail(f"group {field} closed as group {inner}")
                    return
                self.skip(inner, inner_wire, end)
            self.fail(f"group {field} not closed")
        elif wire == END_GROUP:
            self.fail(f"an unopened group {field} closed")
        else:
            self.fail(f"wire type {wire}")

    def string(self, end: int) -> str:
        n = self.varint(end)
        if n > MAX_NAME_BYTES:
            self.fail(f"a name of {n} bytes")
        return self.read(n, end, "a name").decode("utf-8", errors="replace")

    # -- messages -------------------------------------------------------------------------

    def net(self) -> list[CaffeLayer]:
        layers: list[CaffeLayer] = []
        for field, wire in self.fields(self.size):
            if field in (NET_LAYER, NET_LAYERS_V1) and wire == LENGTH_DELIMITED:
                after = f" (after {layers[-1].name!r})" if layers else ""
                self.context = f"layer {len(layers) + 1}{after}"
                where = LAYER_FIELDS if field == NET_LAYER else V1_FIELDS
                layers.append(self.layer(self.length(self.size), where))
                self.context = "the net"
            else:
                self.skip(field, wire, self.size)
        return layers

    def layer(self, end: int, where: _LayerFields) -> CaffeLayer:
        name = layer_type = ""
        raw_blobs: list[tuple[tuple[int, ...], list[_Segment]]] = []
        for field, wire in self.fields(end):
            if field == where.name and wire == LENGTH_DELIMITED:
                name = self.string(end)
                self.context = f"layer {name!r}"
            elif field == where.type and wire == LENGTH_DELIMITED and not where.type_is_enum:
                layer_type = self.string(end)
            elif field == where.type and wire == VARINT and where.type_is_enum:
                code = self.varint(end)
                layer_type = V1_LAYER_TYPES.get(code, f"V1 layer type {code}")
            elif field == where.blobs and wire == LENGTH_DELIMITED:
                raw_blobs.append(self.blob(self.length(end)))
            elif where is V1_FIELDS and field == V1_V0_LAYER and wire == LENGTH_DELIMITED:
                # The oldest nets nest the whole layer, blobs included, in a V0LayerParameter.
                old = self.layer(self.length(end), V0_FIELDS)
                name, layer_type = name or old.name, layer_type or old.type
                raw_blobs.extend((b.shape, list(b.segments)) for b in old.blobs)
            else:
                self.skip(field, wire, end)
        blobs = []
        for i, (shape, segments) in enumerate(raw_blobs):
            count = sum(s.count for s in segments)
            if any(d < 0 for d in shape) or math.prod(shape) != count:
                raise CaffeModelError(
                    f"{self.path}: layer {name!r} blob {i}: shape {list(shape)} does not "
                    f"match the {count} values stored"
                )
            blobs.append(CaffeBlob(self.path, shape, tuple(segments)))
        return CaffeLayer(name, layer_type, tuple(blobs))

    def blob(self, end: int) -> tuple[tuple[int, ...], list[_Segment]]:
        legacy: dict[int, int] = {}
        dims: list[int] | None = None
        floats: list[_Segment] = []
        doubles: list[_Segment] = []
        for field, wire in self.fields(end):
            if field in BLOB_LEGACY_DIMS and wire == VARINT:
                legacy[field] = self.int64(end)
            elif field == BLOB_SHAPE and wire == LENGTH_DELIMITED:
                dims = (dims or []) + self.shape(self.length(end))
            elif field == BLOB_DATA and wire in (LENGTH_DELIMITED, FIXED32):
                floats.append(self.values(field, wire, end, "<f4"))
            elif field == BLOB_DOUBLE_DATA and wire in (LENGTH_DELIMITED, FIXED64):
                doubles.append(self.values(field, wire, end, "<f8"))
            else:  # diff, double_diff and anything newer
                self.skip(field, wire, end)
        # As Caffe's Blob::FromProto: double_data when present wins over data, and the
        # legacy 4-D dimensions win when any is set.
        values = doubles or floats
        if legacy:
            return tuple(legacy.get(f, 0) for f in BLOB_LEGACY_DIMS), values
        return tuple(dims or ()), values

    def shape(self, end: int) -> list[int]:
        dims: list[int] = []
        for field, wire in self.fields(end):
            if field == SHAPE_DIM and wire == LENGTH_DELIMITED:
                packed_end = self.length(end)
                while self.pos < packed_end:
                    dims.append(self.int64(packed_end))
            elif field == SHAPE_DIM and wire == VARINT:
                dims.append(self.int64(end))
            else:
                self.skip(field, wire, end)
        return dims

    def values(self, field: int, wire: int, end: int, dtype: str) -> _Segment:
        """Locate float or double values: packed, or a run of one-value fields."""
        size = np.dtype(dtype).itemsize
        if wire == LENGTH_DELIMITED:
            stop = self.length(end)
            if (stop - self.pos) % size:
                self.fail(f"packed {dtype[1:]} values of {stop - self.pos} bytes")
            segment = _Segment(self.pos, (stop - self.pos) // size, dtype, size)
            self.seek(stop)
            return segment
        if self.pos - self.key_start != 1:
            # A key in more bytes than needed: take just this one value.
            segment = _Segment(self.pos, 1, dtype, size)
            self.seek(self.advance(size, end, "a value"))
            return segment
        return self.run((field << 3) | wire, end, dtype)

    def run(self, key: int, end: int, dtype: str) -> _Segment:
        """Values stored one field each (key byte, value, key byte, value, ...), counted in
        chunks with numpy: the run ends at the first record with another key."""
        start = self.key_start
        stride = 1 + np.dtype(dtype).itemsize
        self.seek(start)
        count = 0
        while True:
            n = min(CHUNK_VALUES, (end - self.pos) // stride)
            if n == 0:
                break
            data = self.read(n * stride, end, "values")
            keys = np.frombuffer(data, dtype=np.uint8)[::stride]
            others = np.flatnonzero(keys != key)
            taken = int(others[0]) if others.size else n
            count += taken
            if taken < n:
                break
        if count == 0:
            self.advance(stride, end, "a value")
        self.seek(start + count * stride)
        return _Segment(start, count, dtype, stride)


def _read_segment(f: io.FileIO, segment: _Segment, out: np.ndarray, path: Path) -> None:
    """Fill ``out`` (float32, ``segment.count`` values) from the file."""
    f.seek(segment.offset)
    if segment.packed and segment.dtype == "<f4":
        # The stored bytes are the array's bytes: read them in place, no copy.
        view = out.data.cast("B")
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise CaffeModelError(f"{path}: the file changed or shrank while being read")
            done += n
        if sys.byteorder == "big":
            out.byteswap(inplace=True)
        return
    item = np.dtype(segment.dtype)
    record = item if segment.packed else np.dtype([("key", "u1"), ("value", item)])
    key = None
    for start in range(0, segment.count, CHUNK_VALUES):
        n = min(CHUNK_VALUES, segment.count - start)
        data = f.read(n * segment.stride)
        if len(data) != n * segment.stride:
            raise CaffeModelError(f"{path}: the file changed or shrank while being read")
        values = np.frombuffer(data, dtype=record)
        if not segment.packed:
            key = values["key"][0] if key is None else key
            if (values["key"] != key).any():
                raise CaffeModelError(f"{path}: the file changed while being read")
            values = values["value"]
        out[start : start + n] = values
