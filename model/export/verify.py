"""Verification of an exported model against its checkpoint (or any network it was traced
from): the ONNX checker, the contract's names, types and metadata, and the file on the CPU
(ONNX Runtime, or OpenVINO at fp32 or bf16) against PyTorch on sizes unlike the export's:
labels, logits and, when the file has them, confidence and the geometry labels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from contract.runtimes import ONNXRUNTIME, OPENVINO, OpenVinoModel
from contract.schema import (
    CONFIDENCE,
    GEOMETRY,
    INPUT,
    LABELS,
    SCORES,
    MetadataError,
    parse_metadata,
)
from model import names
from model.checkpoint import Checkpoint, load_checkpoint
from model.errors import FCNError
from model.evaluation.calibration import confidence_of
from model.export.graph import ModelCard, SegmentationGraph, checkpoint_card, has_geometry_head
from model.export.metadata import model_metadata
from model.export.verification import (
    CONFIDENCE_TOLERANCE,
    LOGIT_TOLERANCE,
    MIN_AGREEMENT,
    CaseResult,
    VerificationReport,
)

# Runs the file: (output names, [N, H, W, 3] uint8) -> those outputs.
Runner = Callable[[list[str], np.ndarray], list[np.ndarray[Any, Any]]]

# (N, H, W) of the comparison batches: 1x1 (the padding's corner case), a non-square odd
# size and a batch of 2; none is the traced example (2, 67, 91).
DEFAULT_CASES = names.VERIFY_CASES


class VerifyError(FCNError, ValueError):
    """The model or checkpoint cannot be read at all; the message names the file."""


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
    runtime: str = ONNXRUNTIME,
    compute: str = "fp32",
) -> VerificationReport:
    """Check ``model_path`` against ``checkpoint``: checker, contract, the file on the CPU
    (ONNX Runtime, or OpenVINO at ``compute`` fp32 or bf16) vs PyTorch.

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
        runtime=runtime,
        compute=compute,
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
    runtime: str = ONNXRUNTIME,
    compute: str = "fp32",
) -> VerificationReport:
    """Check ``model_path`` against the network ``build_net`` makes (called once the file
    has been read, so the two are not in memory twice) and its ``card``.

    ``source`` names the file in messages (default: ``model_path``), ``subject`` the network.
    """

    path = Path(model_path)
    if not path.is_file():
        raise VerifyError(f"{path}: no such model file")
    try:
        model = onnx.load(path)
    except Exception as exc:
        raise VerifyError(f"{path}: not a readable ONNX file ({exc})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    precision = _precision(model, props)
    # bf16 compute rounds every product: its thresholds, whatever the file's precision.
    bound = "bf16" if compute == "bf16" else precision
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
            min_agreement=MIN_AGREEMENT.get(bound, MIN_AGREEMENT["fp16"]),
            logit_tolerance=LOGIT_TOLERANCE if bound == "fp32" else None,
            confidence_tolerance=CONFIDENCE_TOLERANCE if bound == "fp32" else None,
            runtime=f"{runtime} {compute}",
        )

    try:
        # From the file: the C++ checker reads it without another serialised copy.
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        problems.append(f"onnx.checker: {exc}".strip())
    problems += _contract_problems(model, card, source or str(path), subject)
    prepared = _session_bytes(model, precision)
    outputs = {o.name for o in model.graph.output}
    del model
    if prepared is None:
        problems.append("cannot find the ArgMax that makes 'labels'")
        return report("-")
    serialized, logits_name, logits_from = prepared
    try:
        run = _runner(serialized, runtime, compute)
    except Exception as exc:  # each runtime raises its own exception types
        problems.append(f"{runtime} cannot load the model: {exc}")
        return report(logits_from)
    del serialized

    reference = SegmentationGraph(
        build_net(), card.preprocessing, num_classes=card.num_classes, with_scores=True
    ).eval()  # labels, confidence, logits
    found, trouble = _compare(
        run,
        logits_name,
        reference,
        cases,
        seed=seed,
        precision=precision,
        with_confidence=CONFIDENCE in outputs,
    )
    results += found
    problems += trouble
    problems += _geometry_problems(
        run,
        GEOMETRY in outputs,
        reference,
        cases,
        seed=seed,
        min_agreement=MIN_AGREEMENT.get(precision, MIN_AGREEMENT["fp16"]),
    )
    return report(logits_from)


def _geometry_problems(
    run: Runner,
    declared: bool,
    reference: SegmentationGraph,
    cases: Sequence[tuple[int, int, int]],
    *,
    seed: int,
    min_agreement: float,
) -> list[str]:
    """A two-head net's ``geometry`` output against PyTorch's second head on random images
    of each (N, H, W), its labels held to the agreement of ``labels``; [] for one head."""
    if not has_geometry_head(reference.net):
        return (
            [f"the file has a {GEOMETRY!r} output, the network no second head"] if declared else []
        )
    if not declared:
        return [f"the network has a geometric head, the file no {GEOMETRY!r} output"]
    graph = SegmentationGraph(
        reference.net, reference.normalize.preprocessing, with_geometry=True
    ).eval()
    rng = np.random.default_rng(seed)
    problems: list[str] = []
    agree = total = 0
    for n, h, w in cases:
        image = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
        try:
            (geometry,) = run([GEOMETRY], image)
        except Exception as exc:  # each runtime raises its own exception types
            problems.append(f"the runtime failed on a batch of {n} x {h}x{w}: {exc}")
            continue
        with torch.no_grad():
            expected = graph(torch.from_numpy(image))[-1].numpy()
        if geometry.shape != expected.shape or geometry.dtype != np.uint8:
            problems.append(
                f"batch {n} x {h}x{w}: {GEOMETRY!r} is {geometry.dtype} {geometry.shape}, "
                f"PyTorch's uint8 {expected.shape}"
            )
            continue
        agree += int((geometry == expected).sum())
        total += geometry.size
    if total and agree / total < min_agreement:
        problems.append(
            f"{GEOMETRY} labels agree on {agree / total:.4%} of pixels, "
            f"below the {min_agreement:.2%} required"
        )
    return problems


def _runner(serialized: bytes, runtime: str, compute: str) -> Runner:
    """A function that runs the serialised model on ``runtime``'s CPU: (names, image) ->
    those outputs."""
    if runtime == OPENVINO:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(serialized)
            model = OpenVinoModel(path, compute, 0)
        return lambda names, image: [model.run(image)[name] for name in names]
    import onnxruntime as ort

    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    return lambda names, image: [np.asarray(v) for v in session.run(names, {INPUT: image})]


def _compare(
    run: Runner,
    logits_name: str,
    reference: SegmentationGraph,
    cases: Sequence[tuple[int, int, int]],
    *,
    seed: int,
    precision: str,
    with_confidence: bool,
) -> tuple[list[CaseResult], list[str]]:
    """The runtime against PyTorch on random images of each (N, H, W): the results, and
    the problems met on the way."""
    rng = np.random.default_rng(seed)
    results: list[CaseResult] = []
    problems: list[str] = []
    overflowed: list[str] = []
    names = [LABELS, logits_name, *([CONFIDENCE] if with_confidence else [])]
    for n, h, w in cases:
        image = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
        try:
            labels, logits, *confidence = run(names, image)
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
