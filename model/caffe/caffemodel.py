"""Caffe's ``.caffemodel`` files read straight from the protobuf wire format, no Caffe needed.

``read_caffemodel`` scans the layer structure (names, types, blob shapes, where each blob's
values lie) without loading any values; ``CaffeBlob.read`` then reads one blob's values
from the file into one float32 array, so peak memory is the weights, not the file twice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.caffe.wire import (
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    VARINT,
    Segment,
    WireError,
    WireReader,
    read_segment,
)
from model.errors import FCNError

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
class CaffeBlob:
    """One parameter blob: its shape as stored and where its values lie in ``path``."""

    path: Path
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

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
                    read_segment(f, segment, flat[start : start + segment.count], self.path)
                    start += segment.count
        except OSError as exc:
            raise CaffeModelError(f"{self.path}: cannot read ({exc})") from exc
        except WireError as exc:
            raise CaffeModelError(str(exc)) from exc
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
        try:
            layers = scanner.net()
        except WireError as exc:
            raise CaffeModelError(str(exc)) from exc
    if not layers:
        raise CaffeModelError(f"{source}: no layers found: not a Caffe model file")
    return layers


class _Scanner(WireReader):
    """Walks NetParameter and the layer and blob messages in it, locating every value."""

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
        raw_blobs: list[tuple[tuple[int, ...], list[Segment]]] = []
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

    def blob(self, end: int) -> tuple[tuple[int, ...], list[Segment]]:
        legacy: dict[int, int] = {}
        dims: list[int] | None = None
        floats: list[Segment] = []
        doubles: list[Segment] = []
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
