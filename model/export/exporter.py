"""``fcn export``'s library side: the graph written atomically to one ONNX file, verified
against PyTorch before it takes the target's place."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from torch import nn

from model.checkpoint import Checkpoint
from model.export.graph import ExportError, ModelCard, build_onnx, trace_onnx
from model.export.verification import VerificationReport
from model.export.verify import DEFAULT_CASES, verify_net, verify_onnx
from model.files import atomic_path


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
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
    verify: bool = True,
    cases: Sequence[tuple[int, int, int]] | None = None,
    note: str = "",
) -> ExportResult:
    """Export to a temporary file beside ``out``, verify it, then rename it onto ``out``.

    Raises ``ExportError`` (``VerificationError`` when verification fails) and then leaves
    ``out`` as it was. ``cases`` are the (N, H, W) batches verification compares;
    ``note`` is the file's ``fcn.note``.
    """

    def check(tmp: Path, source: str) -> VerificationReport:
        return verify_onnx(tmp, checkpoint, cases=cases or DEFAULT_CASES, source=source)

    return write_model(
        out,
        lambda: build_onnx(
            checkpoint,
            fp16=fp16,
            with_confidence=with_confidence,
            with_scores=with_scores,
            opset=opset,
            note=note,
        ),
        check if verify else None,
    )


# Checks a written file (its path, and the name to give it in messages).
Verify = Callable[[Path, str], VerificationReport]


def write_model(
    out: str | os.PathLike[str], build: Callable[[], onnx.ModelProto], verify: Verify | None
) -> ExportResult:
    """Write the model ``build`` makes to a temporary file beside ``out``, ``verify`` it
    unless None, then rename it onto ``out``; on any ``ExportError`` ``out`` is left as it was.
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
        model = build()
        try:
            onnx.save_model(model, tmp)
        except OSError as exc:
            raise _unwritable(target, exc) from exc
        seconds = time.perf_counter() - start
        del model  # at full width the proto holds every weight: free it before verifying
        report = None
        if verify is not None:
            report = verify(tmp, str(target))
            report = dataclasses.replace(report, model=target)
            if not report.passed:
                raise VerificationError(report)
        size = tmp.stat().st_size
    return ExportResult(target, seconds, size, report)


def export_net(
    net: nn.Module,
    card: ModelCard,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
    verify: bool = True,
    subject: str = "the network",
) -> ExportResult:
    """Export ``net`` (normalised float [N, 3, H, W] -> logits) with ``card`` as its
    metadata to ``out``, verified against ``net`` (``subject`` in messages) unless asked not;
    on any ``ExportError`` ``out`` is left as it was."""
    net.eval()

    def check(tmp: Path, source: str) -> VerificationReport:
        return verify_net(tmp, lambda: net, card, source=source, subject=subject)

    def build() -> onnx.ModelProto:
        return trace_onnx(
            net,
            card,
            fp16=fp16,
            with_confidence=with_confidence,
            with_scores=with_scores,
            opset=opset,
        )

    return write_model(out, build, check if verify else None)


def export_onnx(
    checkpoint: Checkpoint,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    with_confidence: bool = True,
    with_scores: bool = False,
    opset: int | None = None,
    verify: bool = True,
) -> Path:
    """``export_model`` returning just the path: ``checkpoint`` to ``out`` (one file, no
    external data), verified unless asked not."""
    result = export_model(
        checkpoint,
        out,
        fp16=fp16,
        with_confidence=with_confidence,
        with_scores=with_scores,
        opset=opset,
        verify=verify,
    )
    return result.path
