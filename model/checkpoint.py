"""The checkpoint file: a network's weights with everything needed to use them.

A checkpoint carries its model spec, class names, palette, preprocessing and the
training config, so evaluation, prediction and export need nothing but the file. It is a
plain dict saved by ``torch.save`` and loadable with ``weights_only=True``: tensors,
numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contract.palette import IGNORE_INDEX, Color
from model.errors import FCNError
from model.files import atomic_path
from model.nets.fcn import FCN, ModelSpec, build_fcn
from model.nets.preprocessing import Preprocessing

FORMAT = "fcn-checkpoint"
VERSION = 1


class CheckpointError(FCNError, ValueError):
    """A checkpoint that is missing, unreadable or not ours; the message names the file."""


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, Tensor]
    classes: list[str]
    palette: list[Color]
    preprocessing: Preprocessing
    ignore_index: int = IGNORE_INDEX
    dataset: str = ""
    # Evaluation figures of these weights (the four metrics), when known.
    metrics: dict[str, float] = field(default_factory=dict)
    # The training config as a plain dict (see model.training.config), recorded for reproduction.
    config: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    # Optimiser, scaler and RNG states for an exact resume; None in exported weights.
    training_state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.classes) != self.spec.num_classes:
            raise CheckpointError(
                f"{len(self.classes)} class names for a {self.spec.num_classes}-class network"
            )
        if len(self.palette) < self.spec.num_classes:
            raise CheckpointError(
                f"{len(self.palette)} palette colours for {self.spec.num_classes} classes"
            )

    def build_model(self) -> FCN:
        """The network with these weights loaded (strictly: every name and shape must match)."""
        misfit = weights_misfit(self.spec, self.state_dict)
        if misfit:  # checked by load_checkpoint too; this is for checkpoints made in memory
            raise CheckpointError(f"weights do not fit {self.spec.arch}: {misfit}")
        net = build_fcn(self.spec)
        net.load_state_dict(self.state_dict, strict=True)
        return net

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "spec": self.spec.to_dict(),
            "model": self.state_dict,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "preprocessing": self.preprocessing.to_dict(),
            "ignore_index": self.ignore_index,
            "dataset": self.dataset,
            "metrics": dict(self.metrics),
            "config": dict(self.config),
            "iteration": self.iteration,
            "training_state": self.training_state,
        }

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> Checkpoint:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not an FCN checkpoint (no '{FORMAT}' header)")
        if payload.get("version") != VERSION:
            found = payload.get("version")
            raise CheckpointError(
                f"{source}: checkpoint version {found!r}, this code reads {VERSION}"
            )
        try:
            palette = [(int(c[0]), int(c[1]), int(c[2])) for c in payload["palette"]]
            checkpoint = cls(
                spec=ModelSpec.from_dict(payload["spec"]),
                state_dict=dict(payload["model"]),
                classes=[str(c) for c in payload["classes"]],
                palette=palette,
                preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
                ignore_index=int(payload.get("ignore_index", IGNORE_INDEX)),
                dataset=str(payload.get("dataset", "")),
                metrics={str(k): float(v) for k, v in (payload.get("metrics") or {}).items()},
                config=dict(payload.get("config") or {}),
                iteration=int(payload.get("iteration", 0)),
                training_state=payload.get("training_state"),
            )
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{source}: malformed checkpoint ({exc!r})") from exc
        misfit = weights_misfit(checkpoint.spec, checkpoint.state_dict)
        if misfit:
            raise CheckpointError(f"{source}: weights do not fit {checkpoint.spec.arch}: {misfit}")
        return checkpoint


def weights_misfit(spec: ModelSpec, state_dict: dict[str, Tensor]) -> str:
    """Why ``state_dict`` cannot load into ``spec``'s network (names and shapes), or ""."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        wanted = {name: tuple(t.shape) for name, t in build_fcn(spec).state_dict().items()}
    missing = [name for name in wanted if name not in state_dict]
    extra = [name for name in state_dict if name not in wanted]
    found = {
        name: list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        for name, value in state_dict.items()
    }
    reshaped = [
        f"{name} is {found[name]}, not {list(shape)}"
        for name, shape in wanted.items()
        if name in found and found[name] != list(shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", extra)):
        if names:
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            problems.append(f"{label} {', '.join(names[:4])}{more}")
    problems += reshaped[:4]
    return "; ".join(problems)


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically: the file at ``path`` is either the old one or the complete new one."""
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(checkpoint.to_payload(), tmp)
    return target


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint; every failure is a ``CheckpointError`` that names the file."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    with source.open("rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC and head[:1] != PICKLE_MAGIC:  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{source}: not a PyTorch checkpoint{_what_it_is(source, head)}")
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # objects a weights-only load refuses to build
        found = re.search(r"WeightsUnpickler error: (.*?)(?: was not|\.?$)", str(exc), re.M)
        reason = found.group(1).strip() if found else "unpickling failed"
        raise CheckpointError(
            f"{source}: not an FCN checkpoint: it holds Python objects that a safe "
            f"(weights-only) load refuses ({reason})"
        ) from exc
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{source}: unreadable or truncated checkpoint ({first_line})"
        ) from exc
    return Checkpoint.from_payload(payload, str(source))


ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"


def _what_it_is(source: Path, head: bytes) -> str:
    """A hint for files users mistake for checkpoints."""
    suffix = source.suffix.lower()
    if suffix == ".onnx":
        return " (an ONNX model: serve it with fcn-serve, or check it with fcn verify-onnx)"
    if suffix == ".caffemodel":
        return " (Caffe weights: convert them with fcn convert-caffe)"
    if not head:
        return " (the file is empty)"
    return ""
