"""A small protobuf writer for .caffemodel test files, independent of the reader under test.

Writes caffe.NetParameter with its layers as ``layer`` (LayerParameter, field 100) or as the
legacy ``layers`` (V1LayerParameter, field 2), blob shapes as BlobShape or as legacy
num/channels/height/width, values packed or one field each, as floats or doubles. Fields go
in field-number order, as Caffe's C++ protobuf writes them. Values stay numpy arrays until
written, so a full-size file is streamed to disk, never built in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

Chunks = list[bytes | memoryview]

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
V1_TYPE_CODES = {"Convolution": 4, "InnerProduct": 14, "Deconvolution": 39, "ReLU": 18}

# The reference VGG16 convolutions: (name, in, out) at width 1.
VGG16_CONVS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)  # fmt: skip


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as ten bytes of two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def size(chunks: Iterable[bytes | memoryview]) -> int:
    return sum(memoryview(c).nbytes for c in chunks)


def message(number: int, chunks: Chunks) -> Chunks:
    return [key(number, LENGTH_DELIMITED) + varint(size(chunks)), *chunks]


def string(number: int, text: str) -> bytes:
    data = text.encode()
    return key(number, LENGTH_DELIMITED) + varint(len(data)) + data


def unknown_fields() -> bytes:
    """One field of every wire type under numbers Caffe does not use, a nested group too."""
    return (
        key(990, VARINT) + varint(300)
        + key(991, FIXED64) + bytes(range(8))
        + string(992, "unknown")
        + key(993, START_GROUP)
        + key(1, VARINT) + varint(7)
        + key(2, START_GROUP) + key(1, FIXED32) + bytes(4) + key(2, END_GROUP)
        + key(993, END_GROUP)
        + key(994, FIXED32) + bytes(4)
    )  # fmt: skip


@dataclass
class BlobEncoding:
    """How a blob is written."""

    legacy_shape: bool = False  # num/channels/height/width instead of BlobShape
    packed: bool = True  # one length-delimited field, else one field per value
    double: bool = False  # double_data (8) instead of data (5)
    split: bool = False  # values in two fields (a reader must concatenate them)
    extras: bool = False  # a diff and unknown fields to skip


def blob(values: np.ndarray, encoding: BlobEncoding) -> Chunks:
    """BlobProto: shape from ``values.shape``."""
    shape = values.shape
    dtype = "<f8" if encoding.double else "<f4"
    flat = np.ascontiguousarray(values.reshape(-1), dtype=dtype)
    number = 8 if encoding.double else 5
    parts = np.array_split(flat, 2) if encoding.split else [flat]
    data: Chunks = []
    for part in parts:
        if encoding.packed:
            data += message(number, [memoryview(part).cast("B")])
        else:
            wire = FIXED64 if encoding.double else FIXED32
            records = np.empty(part.size, dtype=[("key", "u1"), ("value", dtype)])
            records["key"] = number << 3 | wire
            records["value"] = part
            data.append(memoryview(records.view(np.uint8)).cast("B"))
    chunks: Chunks = []
    if encoding.legacy_shape:
        if len(shape) > 4:
            raise ValueError(f"legacy blobs have at most 4 axes, not {shape}")
        dims = (1,) * (4 - len(shape)) + shape
        chunks += [key(n, VARINT) + varint(d) for n, d in zip((1, 2, 3, 4), dims, strict=True)]
    if not encoding.double:
        chunks += data
    if encoding.extras:
        chunks += message(6, [np.zeros(3, "<f4").tobytes()])  # diff
    if not encoding.legacy_shape:
        dims_bytes = b"".join(varint(d) for d in shape)
        chunks += message(7, message(1, [dims_bytes]))
    if encoding.double:
        chunks += data
    if encoding.extras:
        chunks.append(unknown_fields())
    return chunks


@dataclass
class Layer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


def layer(spec: Layer, *, v1: bool, encoding: BlobEncoding) -> Chunks:
    """LayerParameter, or V1LayerParameter (type as an enum) when ``v1``."""
    blobs = [message(7 if not v1 else 6, blob(values, encoding)) for values in spec.blobs]
    extras = encoding.extras
    chunks: Chunks = []
    if v1:
        if extras:
            chunks += [string(2, "bottom"), string(3, spec.name)]
        chunks += [string(4, spec.name), key(5, VARINT) + varint(V1_TYPE_CODES.get(spec.type, 0))]
        chunks += [c for b in blobs for c in b]
        if extras:
            chunks += [key(7, FIXED32) + np.float32(1).tobytes()] * len(spec.blobs)  # blobs_lr
            chunks.append(unknown_fields())
        return chunks
    chunks += [string(1, spec.name), string(2, spec.type)]
    if extras:
        chunks += [string(3, "bottom"), string(4, spec.name)]
        param = key(3, FIXED32) + np.float32(1).tobytes()  # ParamSpec.lr_mult
        chunks += [c for _ in spec.blobs for c in message(6, [param])]
    chunks += [c for b in blobs for c in b]
    if extras:
        chunks.append(key(10, VARINT) + varint(1))  # phase: TEST
        chunks += message(106, [key(1, VARINT) + varint(21), key(4, VARINT) + varint(3)])
        chunks.append(unknown_fields())
    return chunks


def net(
    layers: Sequence[Layer], *, v1: bool = False, encoding: BlobEncoding | None = None
) -> Chunks:
    """NetParameter with ``layers`` in order."""
    encoding = encoding or BlobEncoding()
    chunks: Chunks = [string(1, "FCN")]
    encoded = [message(2 if v1 else 100, layer(spec, v1=v1, encoding=encoding)) for spec in layers]
    if v1:
        chunks += [c for e in encoded for c in e]
    if encoding.extras:
        chunks += [string(3, "data")] + [key(4, VARINT) + varint(d) for d in (1, 3, 500, 500)]
        chunks += message(6, [key(1, VARINT) + varint(1)])  # state
    if not v1:
        chunks += [c for e in encoded for c in e]
    if encoding.extras:
        chunks.append(unknown_fields())
    return chunks


def to_bytes(chunks: Chunks) -> bytes:
    return b"".join(chunks)


def write(path: str | os.PathLike[str], chunks: Chunks) -> int:
    """Write a file; return its size in bytes."""
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return size(chunks)


def reference_layers(
    arch: str,
    width: float = 1.0,
    num_classes: int = 21,
    *,
    seed: int = 0,
    geometry_classes: int = 0,
) -> list[Layer]:
    """The reference voc-fcn*/net.py layers in definition order (blob-less ones included),
    with random weights of the reference shapes, channels scaled by ``width``. With
    ``geometry_classes``, siftflow-fcn*/net.py's: the head's layers named ``*_sem``, then a
    second head of that many classes named ``*_geo``."""
    rng = np.random.default_rng(seed)

    def c(channels: int) -> int:
        return max(1, round(channels * width))

    def values(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    def conv(name: str, c_in: int, c_out: int, k: int) -> Layer:
        return Layer(name, "Convolution", [values(c_out, c_in, k, k), values(c_out)])

    layers = [Layer("data", "Python")]
    for name, c_in, c_out in VGG16_CONVS:
        layers.append(conv(name, 3 if name == "conv1_1" else c(c_in), c(c_out), 3))
        layers.append(Layer(name.replace("conv", "relu"), "ReLU"))
    fc = c(4096)
    layers += [
        conv("fc6", c(512), fc, 7),
        Layer("drop6", "Dropout"),
        conv("fc7", fc, fc, 1),
    ]
    heads = [("_sem", num_classes), ("_geo", geometry_classes)] if geometry_classes else []
    for suffix, classes in heads or [("", num_classes)]:

        def deconv(name: str, k: int, classes: int = classes) -> Layer:
            return Layer(name, "Deconvolution", [values(classes, classes, k, k)])

        s = suffix
        layers.append(conv(f"score_fr{s}", fc, classes, 1))
        if arch == "fcn32s":
            layers.append(deconv(f"upscore{s}", 64))
        elif arch == "fcn16s":
            layers += [deconv(f"upscore2{s}", 4), conv(f"score_pool4{s}", c(512), classes, 1)]
            layers += [Layer(f"score_pool4{s}c", "Crop"), deconv(f"upscore16{s}", 32)]
        else:
            atonce = arch == "fcn8s-atonce"
            layers.append(deconv(f"upscore2{s}", 4))
            if atonce:
                layers.append(Layer("scale_pool4", "Scale", [values(c(512))]))
            layers += [
                conv(f"score_pool4{s}", c(512), classes, 1),
                deconv(f"upscore_pool4{s}", 4),
            ]
            if atonce:
                layers.append(Layer("scale_pool3", "Scale", [values(c(256))]))
            layers += [conv(f"score_pool3{s}", c(256), classes, 1), deconv(f"upscore8{s}", 16)]
        layers.append(Layer(f"loss{s}", "SoftmaxWithLoss"))
    return layers


def vgg16_layers(width: float = 1.0, *, classes: int = 1000, seed: int = 0) -> list[Layer]:
    """Caffe's ILSVRC VGG16: convolutions, then fc6/fc7/fc8 as InnerProduct [out, in]."""
    rng = np.random.default_rng(seed)

    def c(channels: int) -> int:
        return max(1, round(channels * width))

    def values(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    layers = []
    for name, c_in, c_out in VGG16_CONVS:
        inputs, outputs = 3 if name == "conv1_1" else c(c_in), c(c_out)
        layers.append(Layer(name, "Convolution", [values(outputs, inputs, 3, 3), values(outputs)]))
        layers.append(Layer(name.replace("conv", "relu"), "ReLU"))
    fc = c(4096)
    for name, c_in, c_out in (("fc6", c(512) * 49, fc), ("fc7", fc, fc), ("fc8", fc, classes)):
        layers.append(Layer(name, "InnerProduct", [values(c_out, c_in), values(c_out)]))
    return layers


# The reference voc-fcn-alexnet convolutions: (name, out at width 1, kernel, groups).
ALEXNET_CONVS = (
    ("conv1", 96, 11, 1), ("conv2", 256, 5, 2), ("conv3", 384, 3, 1),
    ("conv4", 384, 3, 2), ("conv5", 256, 3, 2),
)  # fmt: skip


def alexnet_channels(width: float = 1.0) -> dict[str, int]:
    """Each AlexNet layer's channels under ``width``: halves of a grouped net stay halves."""
    counts = {name: 2 * max(1, round(out // 2 * width)) for name, out, _, _ in ALEXNET_CONVS}
    return {**counts, "fc6": max(1, round(4096 * width))}


def alexnet_layers(
    width: float = 1.0, num_classes: int = 21, *, imagenet: bool = False, seed: int = 0
) -> list[Layer]:
    """The reference voc-fcn-alexnet layers (score_fr, upscore) or, with ``imagenet``, BVLC's
    bvlc_alexnet (fc6/fc7/fc8 as InnerProduct), random weights of the reference shapes."""
    rng = np.random.default_rng(seed)
    channels = alexnet_channels(width)

    def values(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    layers = [Layer("data", "Python" if not imagenet else "Data")]
    c_in = 3
    for name, _, k, groups in ALEXNET_CONVS:
        c_out = channels[name]
        layers.append(
            Layer(name, "Convolution", [values(c_out, c_in // groups, k, k), values(c_out)])
        )
        layers.append(Layer(name.replace("conv", "relu"), "ReLU"))
        if name in ("conv1", "conv2"):
            layers.append(Layer(name.replace("conv", "norm"), "LRN"))
        c_in = c_out
    fc = channels["fc6"]
    if imagenet:
        for name, n_in, n_out in (("fc6", c_in * 36, fc), ("fc7", fc, fc), ("fc8", fc, 1000)):
            layers.append(Layer(name, "InnerProduct", [values(n_out, n_in), values(n_out)]))
        return layers
    layers += [
        Layer("fc6", "Convolution", [values(fc, c_in, 6, 6), values(fc)]),
        Layer("drop6", "Dropout"),
        Layer("fc7", "Convolution", [values(fc, fc, 1, 1), values(fc)]),
        Layer("score_fr", "Convolution", [values(num_classes, fc, 1, 1), values(num_classes)]),
        Layer("upscore", "Deconvolution", [values(num_classes, num_classes, 63, 63)]),
        Layer("loss", "SoftmaxWithLoss"),
    ]
    return layers


def small_net(seed: int = 0) -> list[Layer]:
    """A few layers of every kind the reader meets, with small random blobs."""
    rng = np.random.default_rng(seed)

    def values(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    return [
        Layer("data", "Python"),
        Layer("conv1_1", "Convolution", [values(4, 3, 3, 3), values(4)]),
        Layer("relu1_1", "ReLU"),
        Layer("fc6", "InnerProduct", [values(5, 4 * 49), values(5)]),
        Layer("scale_pool4", "Scale", [values(4)]),
        Layer("upscore", "Deconvolution", [values(3, 3, 4, 4)]),
    ]
