"""The schema-1 ONNX contract from the reader's side: tensor names and the ``fcn.*`` metadata.

Self-contained on purpose (standard library and ``onnx`` only, never torch or the rest of
``model``): it is the reader a server mirrors, and it runs where torch is not installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "1"
INPUT = "image"
LABELS = "labels"
SCORES = "scores"
# Symbolic dimension names written onto the graph's inputs and outputs.
DIMS = ("N", "H", "W")
# Keys every schema-1 model carries; values are strings, JSON where structured.
REQUIRED_KEYS = (
    "fcn.schema",
    "fcn.arch",
    "fcn.backbone",
    "fcn.width",
    "fcn.classes",
    "fcn.palette",
    "fcn.ignore_index",
    "fcn.dataset",
    "fcn.metrics",
    "fcn.created",
)

Color = tuple[int, int, int]


class MetadataError(ValueError):
    """A model file whose ``fcn.*`` metadata is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a schema-1 model says about itself."""

    schema: str
    arch: str
    backbone: str
    width: float
    classes: tuple[str, ...]
    palette: tuple[Color, ...]
    ignore_index: int
    dataset: str
    metrics: dict[str, float]
    created: str
    # "fp32" or "fp16": the precision of weights and compute (input and labels never change).
    precision: str = "fp32"
    outputs: tuple[str, ...] = (LABELS,)
    # Informational: the normalisation baked into the graph.
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _json(props: Mapping[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source}: {key} is not valid JSON ({exc})") from exc


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """Parse ``fcn.*`` metadata (e.g. ``session.get_modelmeta().custom_metadata_map``)."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise MetadataError(f"{source}: not an FCN model, metadata lacks {', '.join(missing)}")
    if props["fcn.schema"] != SCHEMA:
        raise MetadataError(
            f"{source}: fcn.schema is {props['fcn.schema']!r}, this reader knows {SCHEMA!r}"
        )
    try:
        classes = tuple(str(name) for name in _json(props, "fcn.classes", source))
        palette = tuple(
            (int(c[0]), int(c[1]), int(c[2])) for c in _json(props, "fcn.palette", source)
        )
        metrics = {str(k): float(v) for k, v in _json(props, "fcn.metrics", source).items()}
        outputs = tuple(_json(props, "fcn.outputs", source)) if "fcn.outputs" in props else None
        preprocessing = (
            dict(_json(props, "fcn.preprocessing", source)) if "fcn.preprocessing" in props else {}
        )
        meta = ModelMetadata(
            schema=props["fcn.schema"],
            arch=props["fcn.arch"],
            backbone=props["fcn.backbone"],
            width=float(props["fcn.width"]),
            classes=classes,
            palette=palette,
            ignore_index=int(props["fcn.ignore_index"]),
            dataset=props["fcn.dataset"],
            metrics=metrics,
            created=props["fcn.created"],
            precision=props.get("fcn.precision", "fp32"),
            outputs=outputs or (LABELS,),
            preprocessing=preprocessing,
        )
    except MetadataError:
        raise
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise MetadataError(f"{source}: malformed fcn.* metadata ({exc})") from exc
    if len(palette) < len(classes):
        raise MetadataError(
            f"{source}: fcn.palette has {len(palette)} colours for {len(classes)} classes"
        )
    return meta


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read the ``fcn.*`` metadata of an ONNX file with plain ``onnx``."""
    import onnx

    source = os.fspath(path)
    try:
        model = onnx.load(source, load_external_data=False)
    except FileNotFoundError:
        raise MetadataError(f"{source}: no such model file") from None
    except Exception as exc:
        raise MetadataError(f"{source}: not a readable ONNX file ({exc})") from exc
    props = {entry.key: entry.value for entry in model.metadata_props}
    return parse_metadata(props, source)
