"""The schema-1 graph in memory: uint8 RGB [N, H, W, 3] in, labels (and confidence)
[N, H, W] out, traced from a network (a checkpoint's, or any module returning logits) with the
normalisation, the argmax and the softmax inside and the ``fcn.*`` metadata on.

Preprocessing (cast, channel order, mean/std, NHWC -> NCHW), the argmax and the confidence live
inside the graph, so a server only moves bytes; the metadata makes the file self-describing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import onnx
import torch
from torch import Tensor, nn

from contract.palette import IGNORE_INDEX, Color
from contract.schema import (
    CONFIDENCE,
    DIMS,
    GEOMETRY,
    GEOMETRY_CLASSES,
    GEOMETRY_CLASSES_KEY,
    INPUT,
    LABELS,
    NOTE_KEY,
    SCHEMA,
    SCORES,
    label_dtype,
)
from contract.tiling import KEY as TILING_KEY
from contract.tiling import Tiling
from model import names
from model.checkpoint import Checkpoint
from model.errors import FCNError
from model.evaluation.calibration import confidence_of
from model.nets.fcn import network_tiling
from model.nets.preprocessing import Normalize, Preprocessing

MIN_OPSET = names.MIN_OPSET
# The traced example: batch 2 and sizes other than 1, so torch.export does not specialise
# N, H or W; verification runs on other sizes so a constant traced from it would show.
EXAMPLE_SHAPE = (2, 67, 91, 3)


class ExportError(FCNError, RuntimeError):
    """The export could not produce a model file; nothing was written."""


def output_names(
    *, with_confidence: bool, with_scores: bool, with_geometry: bool = False
) -> list[str]:
    """The graph's outputs, in the contract's order."""
    return [
        LABELS,
        *([CONFIDENCE] if with_confidence else []),
        *([SCORES] if with_scores else []),
        *([GEOMETRY] if with_geometry else []),
    ]


class SegmentationGraph(nn.Module):
    """The exported computation: normalise, score, argmax (and softmax).

    ``image`` uint8 [N, H, W, 3] RGB -> labels [N, H, W] (uint8, int32 above 255 classes),
    then, as asked, ``confidence_of`` the logits (uint8 [N, H, W]) and float32 logits
    [N, C, H, W]. ``net`` maps the normalised float image [N, 3, H, W] to the final
    (upsampled, cropped) logits [N, C, H, W]; ``num_classes`` is C (default:
    ``net.num_classes``). ``with_geometry``: also a two-head net's second labels, uint8
    [N, H, W], last.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocessing: Preprocessing,
        *,
        num_classes: int | None = None,
        fp16: bool = False,
        with_confidence: bool = True,
        with_scores: bool = False,
        with_geometry: bool = False,
    ):
        super().__init__()
        self.with_geometry = with_geometry
        self.dtype = torch.float16 if fp16 else torch.float32
        self.net = net.to(self.dtype).eval()
        # Normalisation stays float32 (Caffe's 0-255 means lose bits in half), then casts.
        self.normalize = Normalize(preprocessing)
        self.with_confidence = with_confidence
        self.with_scores = with_scores
        if num_classes is None:
            # getattr: nn.Module types its attributes as Tensor | Module.
            num_classes = int(getattr(net, "num_classes"))  # noqa: B009
        self.label_dtype = getattr(torch, label_dtype(num_classes))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = self.normalize(image.permute(0, 3, 1, 2)).to(self.dtype)  # [N, 3, H, W]
        if self.with_geometry:
            logits, geometry_logits = self.net(x, geometry=True)  # [N, C | G, H, W]
        else:
            logits = self.net(x)  # [N, C, H, W]
        labels = logits.argmax(1).to(self.label_dtype)  # [N, H, W]
        outputs = [labels]
        if self.with_confidence:
            outputs.append(confidence_of(logits))
        if self.with_scores:
            outputs.append(logits.float())
        if self.with_geometry:
            outputs.append(geometry_logits.argmax(1).to(torch.uint8))
        return tuple(outputs)


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about its network, whatever made it: the ``fcn.*`` values
    that do not depend on how it is exported (precision, outputs, time)."""

    arch: str
    backbone: str
    width: float
    classes: Sequence[str]
    palette: Sequence[Color]  # at least one colour a class
    preprocessing: Preprocessing
    tiling: Tiling
    dataset: str = ""
    # Evaluation figures of these weights, as fractions (SegmentationMetrics.summary's keys).
    metrics: Mapping[str, float] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX
    # Where published weights came from (``fcn.origin``); empty for weights trained here.
    origin: Mapping[str, str] = field(default_factory=dict)
    # What users must know before trusting the labels (``fcn.note``); empty: nothing.
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def checkpoint_card(checkpoint: Checkpoint) -> ModelCard:
    """The card of one of our checkpoints, on whichever backbone its spec names."""
    spec = checkpoint.spec
    return ModelCard(
        arch=spec.arch,
        backbone=spec.backbone,
        width=spec.width,
        classes=checkpoint.classes,
        palette=checkpoint.palette,
        preprocessing=checkpoint.preprocessing,
        tiling=network_tiling(spec.arch, spec.backbone),
        dataset=checkpoint.dataset,
        metrics=checkpoint.metrics,
        ignore_index=checkpoint.ignore_index,
    )


def has_geometry_head(net: nn.Module) -> bool:
    """Whether ``net`` has a second, geometric head (``model.nets``: ``geometry_classes``)."""
    return bool(getattr(net, "geometry_classes", 0))


def metadata(
    card: ModelCard,
    *,
    fp16: bool,
    with_confidence: bool,
    with_scores: bool,
    with_geometry: bool = False,
) -> dict[str, str]:
    """The ``fcn.*`` metadata of the contract: every value a string, JSON where structured."""
    outputs = output_names(
        with_confidence=with_confidence, with_scores=with_scores, with_geometry=with_geometry
    )
    return {
        "fcn.schema": SCHEMA,
        "fcn.arch": card.arch,
        "fcn.backbone": card.backbone,
        "fcn.width": json.dumps(card.width),
        "fcn.classes": json.dumps(list(card.classes)),
        "fcn.palette": json.dumps([list(c) for c in card.palette[: card.num_classes]]),
        "fcn.ignore_index": str(card.ignore_index),
        "fcn.dataset": card.dataset,
        "fcn.metrics": json.dumps(dict(card.metrics)),
        "fcn.preprocessing": json.dumps(card.preprocessing.to_dict()),
        "fcn.precision": "fp16" if fp16 else "fp32",
        "fcn.outputs": json.dumps(outputs),
        TILING_KEY: card.tiling.to_json(),
        "fcn.origin": json.dumps(dict(card.origin)),
        # Only when there is something to say: a file without a note is as before.
        **({NOTE_KEY: card.note} if card.note else {}),
        # The names of the second head's ids, for whoever draws or reports them.
        **({GEOMETRY_CLASSES_KEY: json.dumps(list(GEOMETRY_CLASSES))} if with_geometry else {}),
        "fcn.created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter reports progress and known-harmless notices on stdout, logging and
    warnings; keep them out of our CLI's output and out of strict test runs."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _name_dims(model: onnx.ModelProto) -> None:
    """Give every graph input/output the contract's dimension names.

    The exporter annotates outputs with unsimplified expressions of H and W (the crop
    arithmetic); at runtime they equal H and W, so state that plainly for readers such as
    ONNX Runtime, Triton and our service.
    """
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        names: Sequence[str | None] | None = {4: (*DIMS, None), 3: DIMS}.get(len(dims))
        if value.name == SCORES:
            names = ("N", None, "H", "W")
        if names is None:
            continue
        for dim, name in zip(dims, names, strict=True):
            if name is not None:
                dim.dim_param = name


def build_onnx(
    checkpoint: Checkpoint,
    *,
    fp16: bool = False,
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
    note: str = "",
) -> onnx.ModelProto:
    """Trace the checkpoint's network into an in-memory ONNX model of the contract (with
    ``note`` as its ``fcn.note``)."""
    return trace_onnx(
        checkpoint.build_model(),
        replace(checkpoint_card(checkpoint), note=note),
        fp16=fp16,
        with_confidence=with_confidence,
        with_scores=with_scores,
        opset=opset,
    )


def trace_onnx(
    net: nn.Module,
    card: ModelCard,
    *,
    fp16: bool = False,
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Trace ``net`` (normalised float [N, 3, H, W] -> logits [N, C, H, W]) inside the
    contract's graph into an in-memory ONNX model carrying ``card`` as its metadata; with
    ``confidence`` unless not ``with_confidence``, with ``scores`` when ``with_scores``."""
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET} to {newest}")
    # A two-head net (SIFT Flow's) exports its second head's labels as ``geometry``.
    with_geometry = has_geometry_head(net)
    graph = SegmentationGraph(
        net,
        card.preprocessing,
        num_classes=card.num_classes,
        fp16=fp16,
        with_confidence=with_confidence,
        with_scores=with_scores,
        with_geometry=with_geometry,
    ).eval()
    example = torch.zeros(EXAMPLE_SHAPE, dtype=torch.uint8)
    dims = {i: torch.export.Dim(name, min=1) for i, name in enumerate(DIMS)}
    outputs = output_names(
        with_confidence=with_confidence, with_scores=with_scores, with_geometry=with_geometry
    )
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=outputs,
                dynamic_shapes={"image": dims},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for {card.arch}: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    _name_dims(model)
    meta = metadata(
        card,
        fp16=fp16,
        with_confidence=with_confidence,
        with_scores=with_scores,
        with_geometry=with_geometry,
    )
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "fcn-segmentation"
    model.doc_string = f"FCN {card.arch}, ONNX contract schema {SCHEMA}"
    return model
