"""ONNX export to the schema-1 contract: uint8 RGB [N, H, W, 3] in, uint8 labels [N, H, W] out.

Preprocessing (cast, channel order, mean/std, NHWC -> NCHW) and the argmax live inside the
graph, so a server only moves bytes; the ``fcn.*`` metadata makes the file self-describing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch
from torch import Tensor, nn

from contract.schema import DIMS, INPUT, LABELS, SCHEMA, SCORES
from model.checkpoint import Checkpoint
from model.errors import FCNError
from model.files import atomic_path
from model.nets.fcn import FCN
from model.nets.preprocessing import Normalize, Preprocessing

if TYPE_CHECKING:
    from model.export.verify import VerificationReport

# Below this opset the exporter's translations are not maintained.
MIN_OPSET = 18
# The traced example: batch 2 and sizes other than 1, so torch.export does not specialise
# N, H or W; verification runs on other sizes so a constant traced from it would show.
EXAMPLE_SHAPE = (2, 67, 91, 3)


class ExportError(FCNError, RuntimeError):
    """The export could not produce a model file; nothing was written."""


class OutputPathError(ExportError):
    """The model file cannot be written where asked; the message names the path."""


class VerificationError(ExportError):
    """The exported graph failed verification against PyTorch; nothing was written."""

    def __init__(self, report: VerificationReport):
        super().__init__(f"verification failed: {'; '.join(report.failures)}")
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    """A written model file with how it was made and, unless skipped, its verification."""

    path: Path
    export_seconds: float
    size_bytes: int
    report: VerificationReport | None


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
        self.label_dtype = torch.uint8 if net.num_classes <= 255 else torch.int32

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


def _unwritable(target: Path, exc: OSError) -> OutputPathError:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        return OutputPathError(f"{target}: folder {folder} does not exist")
    if not folder.is_dir():
        return OutputPathError(f"{target}: {folder} is not a folder")
    return OutputPathError(f"{target}: cannot write in {folder} ({exc.strerror or exc})")


def export_model(
    checkpoint: Checkpoint,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    with_scores: bool = False,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[tuple[int, int, int]] | None = None,
) -> ExportResult:
    """Export to a temporary file beside ``out``, verify it, then rename it onto ``out``.

    Raises ``ExportError`` (``VerificationError`` when verification fails) and then leaves
    ``out`` as it was. ``cases`` are the (N, H, W) batches verification compares.
    """
    target = Path(out)
    if target.is_dir():
        raise OutputPathError(f"{target}: is a folder; give the path of the .onnx file to write")
    with contextlib.ExitStack() as stack:
        # The temporary file comes first: an unwritable --out fails before a long export.
        try:
            tmp = stack.enter_context(atomic_path(target))
        except OSError as exc:
            raise _unwritable(target, exc) from exc
        start = time.perf_counter()
        model = build_onnx(checkpoint, fp16=fp16, with_scores=with_scores, opset=opset)
        try:
            onnx.save_model(model, tmp)
        except OSError as exc:
            raise _unwritable(target, exc) from exc
        seconds = time.perf_counter() - start
        del model  # at full width the proto holds every weight: free it before verifying
        report = None
        if verify:
            from model.export.verify import DEFAULT_CASES, verify_onnx

            report = verify_onnx(tmp, checkpoint, cases=cases or DEFAULT_CASES)
            report = dataclasses.replace(report, model=target)
            if not report.passed:
                raise VerificationError(report)
        size = tmp.stat().st_size
    return ExportResult(target, seconds, size, report)


def export_onnx(
    checkpoint: Checkpoint,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    with_scores: bool = False,
    opset: int | None = None,
    verify: bool = True,
) -> Path:
    """``export_model`` returning just the path: ``checkpoint`` to ``out`` (one file, no
    external data), verified unless asked not."""
    result = export_model(
        checkpoint, out, fp16=fp16, with_scores=with_scores, opset=opset, verify=verify
    )
    return result.path
