"""Verification of an exported model against its checkpoint (or any network it was traced
from): the ONNX checker, the contract's names, types and metadata, and ONNX Runtime (CPU)
against PyTorch on sizes unlike the export's: labels, logits and, when the file has it,
confidence.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import nn

from contract.schema import CONFIDENCE, INPUT, LABELS, SCORES, MetadataError, parse_metadata
from model import names
from model.checkpoint import Checkpoint, load_checkpoint
from model.errors import FCNError
from model.evaluation.calibration import confidence_of
from model.export.graph import ModelCard, SegmentationGraph, checkpoint_card
from model.export.metadata import model_metadata

if TYPE_CHECKING:
    import onnxruntime as ort

# Share of pixels whose label must match PyTorch's (float32 reference) for each precision.
# int8 (``fcn export --int8``, static QDQ): its rounding moves near-tied pixels by design.
MIN_AGREEMENT = {"fp32": 0.9999, "fp16": 0.995, "int8": 0.98}
# fp32 logits must lie within this of PyTorch's, relative to the largest logit magnitude
# (absolute when logits are below 1): float32 accumulation over thousands of channels
# leaves ~1e-6 of the magnitude, so 1e-4 flags real divergence, not rounding.
LOGIT_TOLERANCE = 1e-4
# fp32 confidence must lie within this many units (of 255) of round(255 x max softmax) of
# PyTorch's logits: float32 softmax differs in its last bits, which moves a value sitting on
# a rounding tie by one.
CONFIDENCE_TOLERANCE = 1
# (N, H, W) of the comparison batches: 1x1 (the padding's corner case), a non-square odd
# size and a batch of 2; none is the traced example (2, 67, 91).
DEFAULT_CASES = names.VERIFY_CASES


class VerifyError(FCNError, ValueError):
    """The model or checkpoint cannot be read at all; the message names the file."""


@dataclass(frozen=True)
class CaseResult:
    """One batch through both runtimes."""

    shape: tuple[int, int, int]  # (N, H, W)
    agreement: float  # share of pixels with the same label
    max_logit_error: float  # max |ORT - PyTorch|, relative to max(1, max |logit|)
    # max |ORT - PyTorch| of ``confidence`` in units of 1/255; None when the file has none.
    max_confidence_error: int | None = None


@dataclass(frozen=True)
class VerificationReport:
    """What was checked and what was found; ``passed`` is the verdict."""

    model: Path
    arch: str
    precision: str
    num_classes: int
    # Where ORT's logits came from: the model's ``scores`` output or, without it, the
    # tensor its ArgMax reads (exposed as an extra output of an in-memory copy).
    logits_from: str
    cases: tuple[CaseResult, ...]
    # Failed checks besides the thresholds (checker, contract, metadata, runtime errors).
    problems: tuple[str, ...] = ()
    min_agreement: float = MIN_AGREEMENT["fp32"]
    # None when logits are reported but not held to a bound (fp16).
    logit_tolerance: float | None = LOGIT_TOLERANCE
    # Likewise for confidence (held to a bound in fp32 only, as the logits it comes from).
    confidence_tolerance: int | None = CONFIDENCE_TOLERANCE

    @property
    def agreement(self) -> float:
        """Share of all compared pixels whose labels agree."""
        total = sum(int(np.prod(c.shape)) for c in self.cases)
        if not total:
            return 0.0
        return sum(c.agreement * int(np.prod(c.shape)) for c in self.cases) / total

    @property
    def max_logit_error(self) -> float:
        return max((c.max_logit_error for c in self.cases), default=float("nan"))

    @property
    def max_confidence_error(self) -> int | None:
        """The largest confidence error of any case; None when the file has no confidence."""
        errors = [c.max_confidence_error for c in self.cases if c.max_confidence_error is not None]
        return max(errors, default=None)

    @property
    def failures(self) -> list[str]:
        """Every reason the model fails, empty when it passes."""
        failures = list(self.problems)
        if not self.cases and not self.problems:
            failures.append("no comparison ran")
        if self.cases and self.agreement < self.min_agreement:
            failures.append(
                f"labels agree on {self.agreement:.4%} of pixels, "
                f"below the {self.min_agreement:.2%} required"
            )
        tol = self.logit_tolerance
        if self.cases and tol is not None and not self.max_logit_error <= tol:
            failures.append(f"logit error {self.max_logit_error:.2e} above {tol:.0e}")
        bound, error = self.confidence_tolerance, self.max_confidence_error
        if bound is not None and error is not None and error > bound:
            failures.append(f"confidence off by {error} (of 255), more than {bound}")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        """A short human-readable report."""
        out = [
            f"{self.model}: {self.arch}, {self.precision}, {self.num_classes} classes",
            "  onnx.checker (full), contract and metadata: ok"
            if not self.problems
            else "  problems:",
            *(f"    - {p}" for p in self.problems),
        ]
        for case in self.cases:
            n, h, w = case.shape
            confidence = case.max_confidence_error
            out.append(
                f"  batch {n} x {h}x{w}: labels agree {case.agreement:9.4%}, "
                f"max logit error {case.max_logit_error:.1e}"
                + ("" if confidence is None else f", confidence within {confidence}")
            )
        if self.cases:
            tol = self.logit_tolerance
            bound = "reported only" if tol is None else f"need <= {tol:.0e}"
            out += [
                f"  labels: {self.agreement:.4%} agree (need >= {self.min_agreement:.2%})",
                f"  logits ({self.logits_from}): max error {self.max_logit_error:.1e} "
                f"of the largest logit ({bound})",
            ]
            error, limit = self.max_confidence_error, self.confidence_tolerance
            if error is None:
                out.append("  confidence: no such output")
            else:
                need = "reported only" if limit is None else f"need <= {limit}"
                out.append(
                    f"  confidence: within {error} of round(255 x max softmax) of PyTorch's "
                    f"logits ({need})"
                )
        out.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _precision(model: onnx.ModelProto, props: dict[str, str]) -> str:
    """int8 when the file records its quantization (``fcn.quantization``); else fp16 when the
    metadata says so or, lacking it, when the weights are half floats."""
    if "fcn.quantization" in props:
        return "int8"
    if "fcn.precision" in props:
        return props["fcn.precision"]
    half = any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    return "fp16" if half else "fp32"


def _contract_problems(
    model: onnx.ModelProto, card: ModelCard, source: str, subject: str
) -> list[str]:
    """The contract's own verdict on the file (the words the service refuses it with), then
    whether its metadata describes ``card`` (called ``subject`` in the messages)."""
    problems: list[str] = []
    try:
        meta = model_metadata(model, source)
    except MetadataError as exc:
        problems.append(str(exc))
        try:  # the tensors broke the contract; the metadata may still be compared
            meta = parse_metadata({p.key: p.value for p in model.metadata_props}, source)
        except MetadataError:
            return problems
    if meta.arch != card.arch:
        problems.append(f"fcn.arch is {meta.arch!r}, {subject} is {card.arch!r}")
    if list(meta.classes) != list(card.classes):
        problems.append(f"fcn.classes differ from {subject}'s class names")
    if list(meta.palette) != [tuple(c) for c in card.palette[: meta.num_classes]]:
        problems.append(f"fcn.palette differs from {subject}'s colours")
    return problems


def _logits_tensor(model: onnx.ModelProto) -> str | None:
    """The tensor the labels' ArgMax reads: the logits, whatever the exporter named them."""
    producers = {out: node for node in model.graph.node for out in node.output}
    name = LABELS
    while (node := producers.get(name)) is not None:
        if node.op_type == "ArgMax":
            return str(node.input[0])
        if node.op_type not in ("Cast", "Identity"):
            return None
        name = str(node.input[0])
    return None


def _session_bytes(model: onnx.ModelProto, precision: str) -> tuple[bytes, str, str] | None:
    """The serialised model with its logits reachable, the logits' name and their source."""
    outputs = {o.name for o in model.graph.output}
    if SCORES in outputs:
        return model.SerializeToString(), SCORES, "scores output"
    logits = _logits_tensor(model)
    if logits is None:
        return None
    # Same nodes and weights; only an extra graph output, so this is the file's own math.
    elem = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
    model.graph.output.append(onnx.helper.make_tensor_value_info(logits, elem, None))
    return model.SerializeToString(), logits, "ArgMax input"


def verify_onnx(
    model_path: str | os.PathLike[str],
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    cases: Sequence[tuple[int, int, int]] = DEFAULT_CASES,
    seed: int = 0,
    source: str | None = None,
) -> VerificationReport:
    """Check ``model_path`` against ``checkpoint``: checker, contract, ORT CPU vs PyTorch.

    ``source`` names the file in messages (default: ``model_path``).
    """
    path = Path(model_path)
    if not path.is_file():
        raise VerifyError(f"{path}: no such model file")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    return verify_net(
        path,
        checkpoint.build_model,
        checkpoint_card(checkpoint),
        cases=cases,
        seed=seed,
        source=source,
        subject="the checkpoint",
    )


def verify_net(
    model_path: str | os.PathLike[str],
    build_net: Callable[[], nn.Module],
    card: ModelCard,
    *,
    cases: Sequence[tuple[int, int, int]] = DEFAULT_CASES,
    seed: int = 0,
    source: str | None = None,
    subject: str = "the network",
) -> VerificationReport:
    """Check ``model_path`` against the network ``build_net`` makes (called once the file
    has been read, so the two are not in memory twice) and its ``card``.

    ``source`` names the file in messages (default: ``model_path``), ``subject`` the network.
    """
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise VerifyError(f"{path}: no such model file")
    try:
        model = onnx.load(path)
    except Exception as exc:
        raise VerifyError(f"{path}: not a readable ONNX file ({exc})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    precision = _precision(model, props)
    problems: list[str] = []
    results: list[CaseResult] = []

    def report(logits_from: str) -> VerificationReport:
        return VerificationReport(
            model=path,
            arch=props.get("fcn.arch", "?"),
            precision=precision,
            num_classes=card.num_classes,
            logits_from=logits_from,
            cases=tuple(results),
            problems=tuple(problems),
            min_agreement=MIN_AGREEMENT.get(precision, MIN_AGREEMENT["fp16"]),
            logit_tolerance=LOGIT_TOLERANCE if precision == "fp32" else None,
            confidence_tolerance=CONFIDENCE_TOLERANCE if precision == "fp32" else None,
        )

    try:
        # From the file: the C++ checker reads it without another serialised copy.
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        problems.append(f"onnx.checker: {exc}".strip())
    problems += _contract_problems(model, card, source or str(path), subject)
    prepared = _session_bytes(model, precision)
    del model
    if prepared is None:
        problems.append("cannot find the ArgMax that makes 'labels'")
        return report("-")
    serialized, logits_name, logits_from = prepared
    try:
        session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    except Exception as exc:
        problems.append(f"ONNX Runtime cannot load the model: {exc}")
        return report(logits_from)
    del serialized

    reference = SegmentationGraph(
        build_net(), card.preprocessing, num_classes=card.num_classes, with_scores=True
    ).eval()  # labels, confidence, logits
    found, trouble = _compare(
        session, logits_name, reference, cases, seed=seed, precision=precision
    )
    results += found
    problems += trouble
    return report(logits_from)


def _compare(
    session: ort.InferenceSession,
    logits_name: str,
    reference: SegmentationGraph,
    cases: Sequence[tuple[int, int, int]],
    *,
    seed: int,
    precision: str,
) -> tuple[list[CaseResult], list[str]]:
    """ONNX Runtime against PyTorch on random images of each (N, H, W): the results, and
    the problems met on the way."""
    rng = np.random.default_rng(seed)
    results: list[CaseResult] = []
    problems: list[str] = []
    overflowed: list[str] = []
    names = [LABELS, logits_name]
    if CONFIDENCE in {o.name for o in session.get_outputs()}:
        names.append(CONFIDENCE)
    for n, h, w in cases:
        image = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
        try:
            labels, logits, *confidence = session.run(names, {INPUT: image})
        except Exception as exc:
            problems.append(f"ONNX Runtime failed on a batch of {n} x {h}x{w}: {exc}")
            continue
        with torch.no_grad():
            expected_labels, _, expected_logits = reference(torch.from_numpy(image))
        expected = expected_logits.numpy()
        if (
            labels.shape != (n, h, w)
            or logits.shape != expected.shape
            or any(c.shape != (n, h, w) for c in confidence)
        ):
            problems.append(
                f"batch {n} x {h}x{w}: ONNX Runtime gave labels {labels.shape} and logits "
                f"{logits.shape}, PyTorch {tuple(expected_labels.shape)} and {expected.shape}"
            )
            continue
        agreement = float((labels == expected_labels.numpy()).mean())
        if not np.isfinite(logits).all() and np.isfinite(expected).all():
            overflowed.append(f"{n}x{h}x{w}")
        scale = max(1.0, float(np.abs(expected).max()))
        error = float(np.abs(logits.astype(np.float32) - expected).max()) / scale
        confidence_error = None
        if confidence:
            # Against PyTorch's own float32 logits, by the contract's rule (confidence_of).
            wanted = confidence_of(expected_logits).numpy().astype(np.int16)
            confidence_error = int(np.abs(confidence[0].astype(np.int16) - wanted).max())
        results.append(CaseResult((n, h, w), agreement, error, confidence_error))
    if overflowed:
        hint = ": beyond the float16 range, export without --fp16" if precision == "fp16" else ""
        problems.append(
            f"logits overflow to inf/NaN in ONNX Runtime ({', '.join(overflowed)}){hint}"
        )
    return results, problems
