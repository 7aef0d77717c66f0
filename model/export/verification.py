"""What a verification found: each comparison case's figures, the bounds a precision is held
to, and the verdict with its one-line reasons (``VerificationReport``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Share of pixels whose label must match PyTorch's (float32 reference) for each precision.
# int8 (``fcn export --int8``, static QDQ): its rounding moves near-tied pixels by design.
MIN_AGREEMENT = {"fp32": 0.9999, "fp16": 0.995, "int8": 0.98, "bf16": 0.99}
# fp32 logits must lie within this of PyTorch's, relative to the largest logit magnitude
# (absolute when logits are below 1): float32 accumulation over thousands of channels
# leaves ~1e-6 of the magnitude, so 1e-4 flags real divergence, not rounding.
LOGIT_TOLERANCE = 1e-4
# fp32 confidence must lie within this many units (of 255) of round(255 x max softmax) of
# PyTorch's logits: float32 softmax differs in its last bits, which moves a value sitting on
# a rounding tie by one.
CONFIDENCE_TOLERANCE = 1


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
    # What ran the file: "onnxruntime fp32", or OpenVINO at fp32 or bf16 (``--runtime``).
    runtime: str = "onnxruntime fp32"
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
            f"{self.model}: {self.arch}, {self.precision}, {self.num_classes} classes, "
            f"on {self.runtime}",
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
