"""The one factory of tiny real models for the whole suite: checkpoints, and their ONNX
exports made once per test run into one per-run cache, shared by the export, verification,
Triton, evaluation, service, client and halves tests (each export takes seconds)."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import torch

from contract.palette import voc_colormap
from contract.schema import CONFIDENCE
from model.checkpoint import Checkpoint
from model.export.exporter import export_onnx
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, TORCHVISION, Preprocessing

ARCHS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")
# Half the variants normalise the Caffe way (BGR, 0-255), half torchvision's (RGB, 0-1).
PREPROCESSING = {
    "fcn32s": CAFFE,
    "fcn16s": TORCHVISION,
    "fcn8s": CAFFE,
    "fcn8s-atonce": TORCHVISION,
}
WIDTH = 1 / 32

_ROOT = Path(tempfile.mkdtemp(prefix="fcn-onnx-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def tiny_checkpoint(
    arch: str = "fcn8s", num_classes: int = 5, preprocessing: Preprocessing | None = None
) -> Checkpoint:
    """A random tiny network whose labels vary across the image (score layers non-zero)."""
    spec = ModelSpec(arch, num_classes, WIDTH)
    torch.manual_seed(0)
    net = build_fcn(spec)
    for name in ("score_fr", *net.skip_layers):
        torch.nn.init.normal_(getattr(net, name).weight)
    names = [f"class{i}" for i in range(num_classes)]
    return Checkpoint(
        spec,
        net.state_dict(),
        names,
        voc_colormap(num_classes),
        preprocessing or PREPROCESSING.get(arch, CAFFE),
        dataset="synthetic",
        metrics={"mean_iu": 0.25},
    )


def exported(
    arch: str = "fcn8s",
    *,
    fp16: bool = False,
    with_scores: bool = False,
    num_classes: int = 5,
    confidence: bool = True,
) -> tuple[Checkpoint, Path]:
    """The checkpoint and its export (unverified: the tests compare it themselves), with the
    ``confidence`` output as ``fcn export`` writes it unless not ``confidence``; read-only.

    Without confidence the file is the export with it, less that output and the nodes only it
    needs: the graph ``fcn export --no-confidence`` writes, at no second export's cost."""
    return _exported(arch, fp16, with_scores, num_classes, confidence)


@functools.cache  # on positional arguments, so that every spelling of a call shares one export
def _exported(
    arch: str, fp16: bool, with_scores: bool, num_classes: int, confidence: bool
) -> tuple[Checkpoint, Path]:
    checkpoint = tiny_checkpoint(arch, num_classes)
    name = f"{arch}-{'fp16' if fp16 else 'fp32'}{'-scores' if with_scores else ''}-{num_classes}"
    if not confidence:
        _, full = _exported(arch, fp16, with_scores, num_classes, True)
        return checkpoint, without_confidence(full, _ROOT / f"{name}-noconf.onnx")
    path = export_onnx(
        checkpoint,
        _ROOT / f"{name}.onnx",
        fp16=fp16,
        with_scores=with_scores,
        verify=False,
    )
    return checkpoint, path


def without_confidence(path: Path, out: Path) -> Path:
    """``path``'s model without its ``confidence`` output and the nodes that only feed it,
    its ``fcn.outputs`` saying so, written to ``out``."""
    model = onnx.load(path)
    graph = model.graph
    kept = [o for o in graph.output if o.name != CONFIDENCE]
    del graph.output[:]
    graph.output.extend(kept)
    while True:  # drop nodes whose outputs nothing reads, until none is left
        read = {name for node in graph.node for name in node.input} | {o.name for o in kept}
        dead = [node for node in graph.node if not set(node.output) & read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    for entry in model.metadata_props:
        if entry.key == "fcn.outputs":
            entry.value = json.dumps([n for n in json.loads(entry.value) if n != CONFIDENCE])
    onnx.save_model(model, out)
    return out


def two_head_checkpoint(arch: str = "fcn8s", num_classes: int = 5) -> Checkpoint:
    """``tiny_checkpoint`` with SIFT Flow's second, geometric head of 3 classes, its score
    layers non-zero too, so that its labels vary across the image."""
    one = tiny_checkpoint(arch, num_classes)
    spec = ModelSpec(arch, num_classes, WIDTH, geometry_classes=3)
    torch.manual_seed(1)
    net = build_fcn(spec)
    net.load_state_dict(one.state_dict, strict=False)
    for name in net.score_layers:
        torch.nn.init.normal_(getattr(net, name).weight)
    return Checkpoint(
        spec,
        net.state_dict(),
        one.classes,
        one.palette,
        one.preprocessing,
        dataset="siftflow",
        metrics=dict(one.metrics),
    )


@functools.cache
def exported_two_head(arch: str = "fcn8s") -> tuple[Checkpoint, Path]:
    """A two-head checkpoint and its export, whose outputs are labels and geometry; read-only,
    under a name of its own (the service names its model after the file)."""
    checkpoint = two_head_checkpoint(arch)
    path = export_onnx(checkpoint, _ROOT / f"{arch}-two-head.onnx", verify=False)
    return checkpoint, path


@functools.cache
def exported_as(
    name: str,
    arch: str = "fcn8s",
    *,
    with_scores: bool = False,
    num_classes: int = 5,
    confidence: bool = True,
) -> Path:
    """The cached export of ``exported`` under the file name ``NAME.onnx`` (the service names
    its model after the file), linked, not exported again; read-only."""
    _, path = exported(
        arch, with_scores=with_scores, num_classes=num_classes, confidence=confidence
    )
    named = _ROOT / "named" / f"{name}.onnx"
    named.parent.mkdir(exist_ok=True)
    os.link(path, named)
    return named
