"""The reference Caffe weights on this project's networks, matched by layer name.

A reference FCN ``.caffemodel`` (the VGG16 FCNs of PASCAL VOC, PASCAL-Context, SIFT Flow (two
heads) and NYUDv2's colour net, FCN-AlexNet) becomes a checkpoint
(``convert_caffemodel``); Caffe's ILSVRC VGG16 and BVLC AlexNet initialise an FCN's trunk for
training (``load_caffe_vgg16``, ``load_caffe_alexnet``). Every layer and shape is checked
before any value is read, and each tensor is read once, from the file.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import torch
from torch import Tensor

from contract.palette import VOC_CLASSES, voc_colormap
from model.caffe.caffemodel import CaffeBlob, CaffeLayer, CaffeModelError, read_caffemodel
from model.caffe.datasets import DATASETS, CaffeDataset, dataset_for
from model.checkpoint import Checkpoint
from model.data.classes import SIFTFLOW_GEOMETRY_CLASSES
from model.names import ARCHS
from model.nets.alexnet import TRUNK_LAYERS as ALEXNET_LAYERS
from model.nets.backbones import CONV_NAMES, zero_score_layers
from model.nets.base import GEOMETRY_SUFFIX
from model.nets.fcn import FCN, ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, Preprocessing
from model.zoo.registry import MODELS

# Official files whose SHA1 is known: checked whenever a file carries one of these names.
KNOWN_SHA1 = {
    entry.file_name: entry.sha1
    for entry in MODELS.values()
    if entry.kind == "caffe" and entry.sha1 is not None
}
VGG16_LAYERS = (*CONV_NAMES, "fc6", "fc7")
# The ImageNet classifier of VGG16 and of AlexNet: in the file, of no use to an FCN.
VGG16_CLASSIFIER = CLASSIFIER = "fc8"
# SIFT Flow's nets (siftflow-fcn*/net.py): a semantic head whose layers are named ``*_sem``
# (plain names here) and a geometric one named ``*_geo`` (as here), on one trunk.
SEMANTIC_SUFFIX = "_sem"
GEOMETRY_CLASSES = len(SIFTFLOW_GEOMETRY_CLASSES)
# The reference nets a .caffemodel may hold, as (backbone, arch, geometric classes).
CAFFE_NETS: tuple[tuple[str, str, int], ...] = (
    *(("vgg16", arch, 0) for arch in ARCHS),
    ("caffe-alexnet", "fcn32s", 0),
    *(("vgg16", arch, GEOMETRY_CLASSES) for arch in ("fcn32s", "fcn16s", "fcn8s")),
)
CAFFE_BACKBONES = tuple(dict.fromkeys(net[0] for net in CAFFE_NETS))
# Each backbone's first convolution and its channels at width 1: they give a file's width.
CONV1 = {"vgg16": ("conv1_1", 64), "caffe-alexnet": ("conv1", 96)}
# The layers each ImageNet classifier lends an FCN (fc8 aside).
IMAGENET_LAYERS = {"vgg16": VGG16_LAYERS, "caffe-alexnet": ALEXNET_LAYERS}
IMAGENET_NAMES = {"vgg16": "Caffe's VGG16", "caffe-alexnet": "Caffe's BVLC AlexNet"}

Plan = list[tuple[str, CaffeBlob]]


def file_sha1(path: str | os.PathLike[str]) -> str:
    """The SHA1 of a file as 40 lowercase hex digits, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def check_sha1(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``CaffeModelError`` unless the file's SHA1 is ``expected``."""
    actual = file_sha1(path)
    if actual != expected.lower():
        raise CaffeModelError(
            f"{path}: SHA1 is {actual}, expected {expected.lower()}: "
            "a damaged download or another file"
        )


def net_name(backbone: str, arch: str, geometry_classes: int = 0) -> str:
    """How messages name a reference net: ``fcn8s``, ``caffe-alexnet fcn32s``,
    ``fcn16s (two heads)``."""
    name = arch if backbone == "vgg16" else f"{backbone} {arch}"
    return f"{name} (two heads)" if geometry_classes else name


@functools.cache
def net_layers(backbone: str, arch: str, geometry_classes: int = 0) -> tuple[str, ...]:
    """The weighted Caffe layers of the reference net ``arch`` on ``backbone`` (with a
    geometric head of ``geometry_classes``), in order."""
    # Names do not depend on width: a tiny network names them in a millisecond.
    conv1_channels = CONV1[backbone][1]
    spec = ModelSpec(
        arch,
        len(VOC_CLASSES),
        width=1 / conv1_channels,
        backbone=backbone,
        geometry_classes=geometry_classes,
    )
    return tuple(caffe_layers(build_fcn(spec).state_dict(), two_heads=bool(geometry_classes)))


def arch_layers(arch: str) -> tuple[str, ...]:
    """The weighted Caffe layers of ``arch``'s reference VGG16 net, in network order."""
    return net_layers("vgg16", arch)


def caffe_layers(shapes: Iterable[str], *, two_heads: bool = False) -> dict[str, list[str]]:
    """Tensor names grouped by the Caffe layer that holds them, blob order kept:
    ``conv1_1`` -> [conv1_1.weight, conv1_1.bias]; the at-once Scale layer ``scale_pool4``
    -> [scale_pool4] (a buffer). With ``two_heads`` the semantic head's layers take SIFT
    Flow's names: ``score_fr.weight`` is in ``score_fr_sem``."""
    layers: dict[str, list[str]] = {}
    for name in shapes:
        layer = name.rsplit(".", 1)[0]
        head = layer.startswith(("score", "upscore"))
        if two_heads and head and not layer.endswith(GEOMETRY_SUFFIX):
            layer += SEMANTIC_SUFFIX
        layers.setdefault(layer, []).append(name)
    return layers


def weighted_layers(path: str | os.PathLike[str]) -> dict[str, CaffeLayer]:
    """The layers of a .caffemodel that hold blobs, by name (data, ReLU, ... carry none)."""
    layers: dict[str, CaffeLayer] = {}
    for layer in read_caffemodel(path):
        if not layer.blobs:
            continue
        if layer.name in layers:
            raise CaffeModelError(f"{path}: two layers named {layer.name!r} hold weights")
        layers[layer.name] = layer
    return layers


def detect_net(layer_names: Iterable[str]) -> tuple[str, str, int] | None:
    """The (backbone, arch, geometric classes) whose reference net has exactly these weighted
    layers, if any."""
    names = set(layer_names)
    return next((net for net in CAFFE_NETS if names == set(net_layers(*net))), None)


def detect_arch(layer_names: Iterable[str]) -> str | None:
    """The reference net these weighted layers are exactly, named as messages name it."""
    net = detect_net(layer_names)
    return None if net is None else net_name(*net)


def _strip_ones(shape: Sequence[int]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def fits(stored: Sequence[int], wanted: Sequence[int]) -> bool:
    """Whether a blob of shape ``stored`` holds a tensor of shape ``wanted`` value for value.

    Equal up to leading ones (Caffe's legacy blobs are 4-D: a bias is 1x1x1xC), or an
    InnerProduct [out, in] for a convolution [out, c, k, k] with in = c*k*k: the ImageNet
    classifier's fc6/fc7 read as 7x7 and 1x1 kernels, pool5 being flattened channel-major.
    """
    stored = _strip_ones(stored)
    if stored == _strip_ones(wanted):
        return True
    return (
        len(stored) == 2
        and len(wanted) == 4
        and stored[0] == wanted[0]
        and stored[1] == math.prod(wanted[1:])
    )


def _plan(
    path: str | os.PathLike[str],
    layers: Mapping[str, CaffeLayer],
    groups: Mapping[str, list[str]],
    shapes: Mapping[str, tuple[int, ...]],
    label: str,
) -> Plan:
    """Pair every tensor with its blob, checking blob counts and shapes."""
    plan: Plan = []
    for name, tensors in groups.items():
        layer = layers[name]
        if len(layer.blobs) != len(tensors):
            raise CaffeModelError(
                f"{path}: layer {name!r} ({layer.type or 'untyped'}) has "
                f"{len(layer.blobs)} blobs; {label} takes {len(tensors)} "
                f"({', '.join(t.removeprefix(name + '.') for t in tensors)})"
            )
        for i, (tensor, blob) in enumerate(zip(tensors, layer.blobs, strict=True)):
            wanted = shapes[tensor]
            if not fits(blob.shape, wanted):
                hint = ""
                stored = _strip_ones(blob.shape)
                if name.startswith("score") and stored and stored[0] != wanted[0]:
                    hint = f" (scores for {stored[0]} classes, not {wanted[0]})"
                raise CaffeModelError(
                    f"{path}: layer {name!r} blob {i} has shape {list(blob.shape)}; "
                    f"{tensor} of {label} is {list(wanted)}{hint}"
                )
            plan.append((tensor, blob))
    return plan


def _label(spec: ModelSpec) -> str:
    width = "" if spec.width == 1.0 else f" at width {spec.width:g}"
    return f"{net_name(spec.backbone, spec.arch, spec.geometry_classes)}{width}"


def _layer_problems(
    found: set[str], wanted: Sequence[str], allowed: set[str], net: str
) -> list[str]:
    """What sets the file's weighted layers apart from ``net``'s: those it lacks of
    ``wanted`` and those it has beyond ``allowed``."""
    missing = [name for name in wanted if name not in found]
    extra = sorted(found - allowed)
    problems = []
    if missing:
        problems.append(f"it lacks layers {', '.join(missing)}")
    if extra:
        problems.append(f"it has layers {net} does not: {', '.join(extra)}")
    return problems


def _check_names(
    path: str | os.PathLike[str],
    found: set[str],
    wanted: Sequence[str],
    arch: str,
    verdict: str = "",
) -> None:
    """Raise unless the file's weighted layers are exactly ``arch``'s, saying which differ
    and what the file looks like instead."""
    problems = _layer_problems(found, wanted, set(wanted), arch)
    if not problems:
        return
    hint = ""
    other = detect_arch(found)
    if other is not None:
        hint = f" Its layers are those of {other}."
    elif found <= set(wanted):  # only some layers missing
        hint = " Is the file cut short?"
    elif CLASSIFIER in found and "score_fr" not in found:
        backbone = "caffe-alexnet" if "conv1" in found else "vgg16"
        hint = (
            f" It looks like an ImageNet classifier such as {IMAGENET_NAMES[backbone]}, which"
            f" initialises training (fcn train --backbone {backbone} --init {backbone}:PATH)"
            " but is no segmentation network."
        )
    verdict = verdict or f"not the weights of {arch}"
    raise CaffeModelError(f"{path}: {verdict}: {'; '.join(problems)}.{hint}")


def _load(
    path: str | os.PathLike[str],
    layers: Mapping[str, CaffeLayer],
    groups: Mapping[str, list[str]],
    state: Mapping[str, Tensor],
    label: str,
) -> None:
    """Check every blob against its tensor, then read each into its tensor in place."""
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    plan = _plan(path, layers, groups, shapes, label)
    # In file order, so the file is read front to back once.
    for name, blob in sorted(plan, key=lambda item: item[1].offset):
        _read_into(blob, state[name])


def convert_caffemodel(
    path: str | os.PathLike[str],
    arch: str | None = None,
    *,
    width: float | None = None,
    backbone: str | None = None,
    dataset: str | None = None,
) -> Checkpoint:
    """A checkpoint from a reference FCN ``.caffemodel``: the classes of its data set (PASCAL
    VOC's 21, PASCAL-Context's 60, NYUDv2's 40), their palette, and the Caffe preprocessing
    of that set's mean. ``arch`` and ``backbone`` default to those the file's layers name,
    ``dataset`` to the one whose class count ``score_fr`` has, and ``width`` to conv1's
    channels over the backbone's (1.0 for the reference files)."""
    layers = weighted_layers(path)
    detected = detect_net(layers)
    if arch is None:
        if detected is None:
            _unknown_net(path, set(layers))
        arch = detected[1]
    if backbone is None:
        backbone = detected[0] if detected is not None and detected[1] == arch else "vgg16"
    # Two heads when the file has them (SIFT Flow's nets); the name checks say what differs.
    geometry = GEOMETRY_CLASSES if "score_fr_geo" in layers and backbone == "vgg16" else 0
    if (backbone, arch, geometry) not in CAFFE_NETS:
        raise CaffeModelError(
            f"{path}: the reference released no Caffe {arch} on {backbone}"
            f"{' with two heads' if geometry else ''}; "
            f"its nets are {', '.join(net_name(*net) for net in CAFFE_NETS)}"
        )
    if width is None:
        width = _stored_width(layers, backbone)
    data = _dataset(path, layers, dataset)
    spec = ModelSpec(arch, len(data.classes), width, backbone=backbone, geometry_classes=geometry)
    wanted = net_layers(backbone, arch, geometry)
    _check_names(path, set(layers), wanted, net_name(backbone, arch, geometry))
    # Built on the CPU and overwritten: the tensors are the weights' only copy in memory.
    state_dict = build_fcn(spec).state_dict()
    groups = caffe_layers(state_dict, two_heads=bool(geometry))
    _load(path, layers, groups, state_dict, _label(spec))
    return Checkpoint(
        spec=spec,
        state_dict=state_dict,
        classes=list(data.classes),
        palette=voc_colormap(len(data.classes)),
        preprocessing=data.preprocessing,
        dataset=data.name,
    )


def _dataset(
    path: str | os.PathLike[str], layers: Mapping[str, CaffeLayer], name: str | None
) -> CaffeDataset:
    """The named data set, else the one whose class count the file's score_fr has (PASCAL
    VOC when it has none or an unknown count: the layer checks then say what is wrong)."""
    if name is not None:
        if name not in DATASETS:
            raise CaffeModelError(
                f"{path}: no reference RGB net was trained on {name!r}; "
                f"known: {', '.join(DATASETS)}"
            )
        return DATASETS[name]
    score = layers.get("score_fr", layers.get("score_fr" + SEMANTIC_SUFFIX))
    shape = score.blobs[0].shape if score is not None and score.blobs else ()
    found = dataset_for(shape[0]) if len(shape) == 4 else None
    return found or DATASETS["voc"]


def _stored_width(layers: Mapping[str, CaffeLayer], backbone: str) -> float:
    name, channels = CONV1[backbone]
    conv = layers.get(name)
    if conv is None or not conv.blobs or len(conv.blobs[0].shape) != 4:
        return 1.0  # the layer checks will say what is wrong
    return conv.blobs[0].shape[0] / channels


def _unknown_net(path: str | os.PathLike[str], found: set[str]) -> NoReturn:
    """Explain a file that is no FCN against the nearest reference net."""
    nearest = min(CAFFE_NETS, key=lambda net: len(found ^ set(net_layers(*net))))
    name = net_name(*nearest)
    verdict = f"not the weights of any FCN; against the nearest, {name}"
    _check_names(path, found, net_layers(*nearest), name, verdict)
    raise CaffeModelError(f"{path}: not the weights of any FCN")


def load_caffe_vgg16(net: FCN, path: str | os.PathLike[str]) -> Preprocessing:
    """Initialise ``net``'s trunk, fc6 and fc7 from Caffe's VGG_ILSVRC_16_layers.caffemodel.

    Score layers are set to zero; upsampling is left as built. Returns the preprocessing
    the weights expect (``CAFFE``: BGR, 0-255, mean subtracted).
    """
    return _load_imagenet(net, path, "vgg16")


def load_caffe_alexnet(net: FCN, path: str | os.PathLike[str]) -> Preprocessing:
    """Initialise a caffe-alexnet FCN's conv1-5, fc6 and fc7 from BVLC's
    bvlc_alexnet.caffemodel (fc6/fc7 stored as InnerProduct), as the reference trained from.

    Score layers are set to zero. Returns ``CAFFE``, the preprocessing of those weights.
    """
    return _load_imagenet(net, path, "caffe-alexnet")


def _load_imagenet(net: FCN, path: str | os.PathLike[str], backbone: str) -> Preprocessing:
    what = IMAGENET_NAMES[backbone]
    if net.backbone != backbone:
        raise CaffeModelError(
            f"{path}: {what} initialises a {backbone} network, not one on {net.backbone}"
        )
    wanted = IMAGENET_LAYERS[backbone]
    layers = weighted_layers(path)
    found = set(layers)
    problems = _layer_problems(found, wanted, {*wanted, CLASSIFIER}, what)
    if problems:
        net_found = detect_arch(found)
        article = "an" if net_found and net_found.startswith("fcn") else "a"  # "an eff"
        hint = f" It holds {article} {net_found}: convert it with fcn convert-caffe."
        hint = hint if net_found else ""
        raise CaffeModelError(f"{path}: not {what}: {'; '.join(problems)}.{hint}")
    groups = {name: [f"{name}.weight", f"{name}.bias"] for name in wanted}
    _load(path, layers, groups, net.state_dict(), f"{_label(net.spec)} ({backbone} trunk)")
    zero_score_layers(net)
    return CAFFE


def _read_into(blob: CaffeBlob, tensor: Tensor) -> None:
    """Read a blob into a tensor in place: straight into its memory when on the CPU."""
    if tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous():
        blob.read(out=tensor.detach().numpy())
    else:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(blob.read()).reshape(tensor.shape))
