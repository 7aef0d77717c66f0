"""The schema-1 graph in memory: uint8 RGB [N, H, W, 3] in, labels [N, H, W] out, traced
from a checkpoint with the normalisation and the argmax inside and the ``fcn.*`` metadata on.

Preprocessing (cast, channel order, mean/std, NHWC -> NCHW) and the argmax live inside the
graph, so a server only moves bytes; the metadata makes the file self-describing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence

import onnx
import torch
from torch import Tensor, nn

from contract.schema import DIMS, INPUT, LABELS, SCHEMA, SCORES, label_dtype
from contract.tiling import KEY as TILING_KEY
from model.checkpoint import Checkpoint
from model.errors import FCNError
from model.nets.fcn import FCN, network_tiling
from model.nets.preprocessing import Normalize, Preprocessing

# Below this opset the exporter's translations are not maintained.
MIN_OPSET = 18
# The traced example: batch 2 and sizes other than 1, so torch.export does not specialise
# N, H or W; verification runs on other sizes so a constant traced from it would show.
EXAMPLE_SHAPE = (2, 67, 91, 3)


class ExportError(FCNError, RuntimeError):
    """The export could not produce a model file; nothing was written."""


class SegmentationGraph(nn.Module):
    """The exported computation: normalise, score, argmax.

    ``image`` uint8 [N, H, W, 3] RGB -> labels [N, H, W] (uint8, int32 above 255 classes)
    and, optionally, float32 logits [N, C, H, W].
    """

    def __init__(
        self,
        net: FCN,
        preprocessing: Preprocessing,
        *,
        fp16: bool = False,
        with_scores: bool = False,
    ):
        super().__init__()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.net = net.to(self.dtype).eval()
        # Normalisation stays float32 (Caffe's 0-255 means lose bits in half), then casts.
        self.normalize = Normalize(preprocessing)
        self.with_scores = with_scores
        self.label_dtype = getattr(torch, label_dtype(net.num_classes))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = self.normalize(image.permute(0, 3, 1, 2)).to(self.dtype)  # [N, 3, H, W]
        logits = self.net(x)  # [N, C, H, W]
        labels = logits.argmax(1).to(self.label_dtype)  # [N, H, W]
        if self.with_scores:
            return labels, logits.float()
        return (labels,)


def metadata(checkpoint: Checkpoint, *, fp16: bool, with_scores: bool) -> dict[str, str]:
    """The ``fcn.*`` metadata of the contract: every value a string, JSON where structured."""
    spec = checkpoint.spec
    return {
        "fcn.schema": SCHEMA,
        "fcn.arch": spec.arch,
        "fcn.backbone": "vgg16",
        "fcn.width": json.dumps(spec.width),
        "fcn.classes": json.dumps(list(checkpoint.classes)),
        "fcn.palette": json.dumps([list(c) for c in checkpoint.palette[: spec.num_classes]]),
        "fcn.ignore_index": str(checkpoint.ignore_index),
        "fcn.dataset": checkpoint.dataset,
        "fcn.metrics": json.dumps(checkpoint.metrics),
        "fcn.preprocessing": json.dumps(checkpoint.preprocessing.to_dict()),
        "fcn.precision": "fp16" if fp16 else "fp32",
        "fcn.outputs": json.dumps([LABELS, SCORES] if with_scores else [LABELS]),
        TILING_KEY: network_tiling(spec.arch).to_json(),
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
    with_scores: bool = False,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Trace the checkpoint's network into an in-memory ONNX model of the contract."""
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET} to {newest}")
    graph = SegmentationGraph(
        checkpoint.build_model(), checkpoint.preprocessing, fp16=fp16, with_scores=with_scores
    ).eval()
    example = torch.zeros(EXAMPLE_SHAPE, dtype=torch.uint8)
    dims = {i: torch.export.Dim(name, min=1) for i, name in enumerate(DIMS)}
    outputs = [LABELS, SCORES] if with_scores else [LABELS]
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
        raise ExportError(f"torch.onnx.export failed for {checkpoint.spec.arch}: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    _name_dims(model)
    meta = metadata(checkpoint, fp16=fp16, with_scores=with_scores)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "fcn-segmentation"
    model.doc_string = f"FCN {checkpoint.spec.arch}, ONNX contract schema {SCHEMA}"
    return model
