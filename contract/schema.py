"""Schema 1: the tensors of an FCN ONNX file and its ``fcn.*`` metadata, with the one set of
rules that the exporter's verifier and the service's start-up both apply.

A file either half refuses, the other refuses with the same words: every problem is found
here and phrased here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from contract.palette import Color
from contract.tiling import KEY as TILING_KEY
from contract.tiling import Tiling, parse_tiling

SCHEMA = "1"
INPUT = "image"
LABELS = "labels"
# The top class's softmax probability x 255, rounded half to even (optional, uint8 [N, H, W]).
CONFIDENCE = "confidence"
CONFIDENCE_SCALE = 255
SCORES = "scores"
# A second head's labels (SIFT Flow's geometric classes), uint8 [N, H, W], where the net has one.
GEOMETRY = "geometry"
# Every output a file may have, in the order the exporter writes them.
OUTPUTS = (LABELS, CONFIDENCE, SCORES, GEOMETRY)
# The names of ``geometry``'s class ids, JSON; a file with the output but without the key
# (exported before the key existed) has SIFT Flow's three, the only two-head net there is.
GEOMETRY_CLASSES_KEY = "fcn.geometry_classes"
GEOMETRY_CLASSES: tuple[str, ...] = ("sky", "horizontal", "vertical")
# Their colours: sky blue, ground grey-violet, walls and objects brown (Cityscapes' sky,
# road and building hues, so a geometry PNG reads at a glance).
GEOMETRY_PALETTE: tuple[Color, ...] = ((70, 130, 180), (128, 64, 128), (140, 90, 50))
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
# One line for users from whoever exported the file (plain text, not JSON), e.g. the demo's
# "synthetic shapes only; for photos serve voc-fcn8s"; shown by /v1/model, the page and
# `fcn info`.
NOTE_KEY = "fcn.note"
# A note is a caveat, not a manual: one line, this long at most.
MAX_NOTE_CHARS = 200
# Keys a reader may find, with the value it assumes when they are absent.
OPTIONAL_KEYS = {
    "fcn.precision": "fp32",
    "fcn.outputs": json.dumps([LABELS]),
    "fcn.preprocessing": "{}",
    # Tile origins on the output stride and the pixels a label depends on (contract.tiling).
    TILING_KEY: Tiling().to_json(),
    # Where published weights came from (name, url, digest...), all strings; {} when trained.
    "fcn.origin": "{}",
    # How an int8 file was quantized (format, weights, activations, ops, calibration); {} for
    # float files. Informational: the graph's inputs and outputs are those of any schema-1 file.
    "fcn.quantization": "{}",
    NOTE_KEY: "",
}
PRECISIONS = ("fp32", "fp16")
# Labels are uint8 while every class id fits below 255 (the ignore index), else int32.
MAX_UINT8_CLASSES = 255


class MetadataError(ValueError):
    """A model file whose ``fcn.*`` metadata or tensors break the contract; the message
    names the file and what is wrong."""


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
    tiling: Tiling = field(default_factory=Tiling)
    # Provenance of published weights, e.g. {"name": "voc-fcn8s", "url": ..., "sha1": ...}.
    origin: dict[str, str] = field(default_factory=dict)
    # How the file was quantized, e.g. {"format": "QDQ", "calibration": {...}}; {} when float.
    quantization: dict[str, Any] = field(default_factory=dict)
    # The exporter's one-line caveat for users (``fcn.note``); "" when it has none.
    note: str = ""
    # The names of ``geometry``'s ids where the file has that output, else ().
    geometry_classes: tuple[str, ...] = ()

    @property
    def has_geometry(self) -> bool:
        """Whether the file has a ``geometry`` output (a two-head net's second labels)."""
        return GEOMETRY in self.outputs

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_confidence(self) -> bool:
        """Whether the file outputs ``confidence`` beside its labels."""
        return CONFIDENCE in self.outputs

    @property
    def label_dtype(self) -> str:
        """The element type of ``labels``: ``uint8``, or ``int32`` above 255 classes."""
        return label_dtype(self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata, as the service reports it (``quantization`` only when the
        file is quantized, so a float file's report is as before)."""
        quantized = {"quantization": self.quantization} if self.quantization else {}
        geometry = {
            "geometry_classes": list(self.geometry_classes),
            "geometry_palette": [list(c) for c in GEOMETRY_PALETTE[: len(self.geometry_classes)]],
        }
        return {
            "schema": self.schema,
            "arch": self.arch,
            "backbone": self.backbone,
            "width": self.width,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "dataset": self.dataset,
            "metrics": self.metrics,
            "preprocessing": self.preprocessing,
            "precision": self.precision,
            "outputs": list(self.outputs),
            "tiling": self.tiling.to_dict(),
            "origin": self.origin,
            "note": self.note,
            **quantized,
            **(geometry if self.has_geometry else {}),
            "created": self.created,
        }


def label_dtype(num_classes: int) -> str:
    """The element type of ``labels`` for ``num_classes`` classes."""
    return "uint8" if num_classes <= MAX_UINT8_CLASSES else "int32"


def note_problem(note: str) -> str | None:
    """Why ``note`` cannot be a model's note (one line of at most MAX_NOTE_CHARS), or None."""
    if "\n" in note or "\r" in note:
        return "must be one line"
    if len(note) > MAX_NOTE_CHARS:
        return f"is {len(note)} characters; a note is one line of at most {MAX_NOTE_CHARS}"
    return None


def no_confidence(source: str) -> str:
    """What either half says when asked for the confidence of a file without it."""
    return (
        f"{source} has no {CONFIDENCE!r} output (exported without it, or before it existed); "
        "export it again: `fcn export --checkpoint CKPT --out MODEL.onnx` writes it unless "
        "given --no-confidence"
    )


def _json(props: Mapping[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(props.get(key, OPTIONAL_KEYS.get(key, "")))
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source}: {key} is not valid JSON ({exc})") from exc


def _color(entry: object) -> Color:
    if not isinstance(entry, list) or len(entry) != 3:
        raise ValueError(f"palette entry {entry!r} is not [r, g, b]")
    r, g, b = (int(v) for v in entry)
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"palette entry {entry!r} has a value outside 0-255")
    return r, g, b


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not a JSON object")
    return {str(k): v for k, v in value.items()}


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """Check and parse ``fcn.*`` metadata (``onnx``'s ``metadata_props`` or ONNX Runtime's
    ``custom_metadata_map``); ``source`` (the file) starts every error message."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise MetadataError(f"{source}: not an FCN model, metadata lacks {', '.join(missing)}")
    if props["fcn.schema"] != SCHEMA:
        raise MetadataError(
            f"{source}: fcn.schema is {props['fcn.schema']!r}, this reader knows {SCHEMA!r}"
        )
    try:
        classes = _json(props, "fcn.classes", source)
        if not isinstance(classes, list) or not classes:
            raise ValueError("fcn.classes is not a non-empty list of names")
        palette = tuple(_color(c) for c in _json(props, "fcn.palette", source))
        metrics = {str(k): float(v) for k, v in _json(props, "fcn.metrics", source).items()}
        outputs = tuple(str(o) for o in _json(props, "fcn.outputs", source))
        meta = ModelMetadata(
            schema=props["fcn.schema"],
            arch=props["fcn.arch"],
            backbone=props["fcn.backbone"],
            width=float(props["fcn.width"]),
            classes=tuple(str(name) for name in classes),
            palette=palette,
            ignore_index=int(props["fcn.ignore_index"]),
            dataset=props["fcn.dataset"],
            metrics=metrics,
            created=props["fcn.created"],
            precision=props.get("fcn.precision", OPTIONAL_KEYS["fcn.precision"]),
            outputs=outputs,
            preprocessing=dict(_json(props, "fcn.preprocessing", source)),
            tiling=parse_tiling(props),
            origin={str(k): str(v) for k, v in _json(props, "fcn.origin", source).items()},
            quantization=_object(_json(props, "fcn.quantization", source), "fcn.quantization"),
            note=props.get(NOTE_KEY, ""),
        )
    except MetadataError:
        raise
    except (TypeError, ValueError, IndexError, AttributeError, KeyError) as exc:
        raise MetadataError(f"{source}: malformed fcn.* metadata ({exc})") from exc
    if len(palette) < len(meta.classes):
        raise MetadataError(
            f"{source}: fcn.palette has {len(palette)} colours for {len(meta.classes)} classes"
        )
    meta = _with_geometry_classes(meta, props, source)
    problem = note_problem(meta.note)
    if problem:
        raise MetadataError(f"{source}: {NOTE_KEY} {problem}")
    if meta.precision not in PRECISIONS:
        raise MetadataError(
            f"{source}: fcn.precision is {meta.precision!r}, not one of {', '.join(PRECISIONS)}"
        )
    if LABELS not in outputs or not set(outputs) <= set(OUTPUTS):
        raise MetadataError(
            f"{source}: fcn.outputs is {list(outputs)}; it must list {LABELS!r} "
            f"and may add {', '.join(repr(o) for o in OUTPUTS if o != LABELS)}"
        )
    return meta


def _with_geometry_classes(
    meta: ModelMetadata, props: Mapping[str, str], source: str
) -> ModelMetadata:
    """``meta`` with the names of its ``geometry`` ids (GEOMETRY_CLASSES_KEY, else SIFT
    Flow's); () for a file without the output, whatever the key says."""
    if not meta.has_geometry:
        return meta
    if GEOMETRY_CLASSES_KEY not in props:
        return replace(meta, geometry_classes=GEOMETRY_CLASSES)
    names = _json(props, GEOMETRY_CLASSES_KEY, source)
    if (
        not isinstance(names, list)
        or not names
        or len(names) > MAX_UINT8_CLASSES
        or not all(isinstance(n, str) for n in names)
    ):
        raise MetadataError(
            f"{source}: {GEOMETRY_CLASSES_KEY} is {props[GEOMETRY_CLASSES_KEY]!r}, not a list "
            f"of 1 to {MAX_UINT8_CLASSES} names"
        )
    return replace(meta, geometry_classes=tuple(names))


def no_geometry(source: str) -> str:
    """Why ``source`` (a model, in words) cannot give ``geometry``, and how to get one."""
    return (
        f"{source} has no {GEOMETRY!r} output; only a two-head net (SIFT Flow's FCN, trained "
        f"with --geometry or converted from Caffe) exported with `fcn export` has one"
    )


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as either reader sees it: its name, its ONNX element type in
    lower case (``uint8``, ``int32``, ``float``, ``float16``) and its dimensions (an int
    when fixed, a name or None when dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


class RuntimeTensor(Protocol):
    """What ONNX Runtime's ``get_inputs()`` and ``get_outputs()`` give (``NodeArg``)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> Sequence[int | str | None]: ...


def session_tensors(tensors: Sequence[RuntimeTensor]) -> list[TensorSpec]:
    """ONNX Runtime's inputs or outputs as the contract sees them: ``tensor(uint8)`` is
    ``uint8``; dimensions stay as ONNX Runtime gives them (int, name or None)."""
    return [
        TensorSpec(t.name, t.type.removeprefix("tensor(").removesuffix(")"), tuple(t.shape))
        for t in tensors
    ]


def check_tensors(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], meta: ModelMetadata
) -> list[str]:
    """Every way the graph's tensors break the contract for ``meta``; empty when none."""
    problems: list[str] = []
    found = {t.name: t for t in [*inputs, *outputs]}
    expected = {INPUT: ("uint8", 4), LABELS: (meta.label_dtype, 3)}
    if CONFIDENCE in meta.outputs or CONFIDENCE in found:
        expected[CONFIDENCE] = ("uint8", 3)
    if SCORES in meta.outputs or SCORES in found:
        expected[SCORES] = ("float", 4)
    if GEOMETRY in meta.outputs or GEOMETRY in found:
        expected[GEOMETRY] = ("uint8", 3)
    for name, (dtype, rank) in expected.items():
        tensor = found.get(name)
        if tensor is None:
            problems.append(f"the graph has no {name!r} tensor")
            continue
        if tensor.dtype != dtype:
            problems.append(f"{name!r} is {tensor.dtype}, the contract says {dtype}")
        if len(tensor.shape) != rank:
            problems.append(f"{name!r} has rank {len(tensor.shape)}, the contract says {rank}")
    image = found.get(INPUT)
    if image is not None and len(image.shape) == 4:
        if image.shape[3] != 3:
            problems.append(f"{INPUT!r} must end in 3 channels")
        if any(isinstance(d, int) for d in image.shape[:3]):
            problems.append(f"{INPUT!r} has a fixed N, H or W; the contract needs them dynamic")
    if [t.name for t in inputs] != [INPUT]:
        problems.append(f"the graph's inputs are {[t.name for t in inputs]}, not [{INPUT!r}]")
    declared = sorted(meta.outputs)
    if sorted(t.name for t in outputs) != declared:
        problems.append(
            f"the graph's outputs are {sorted(t.name for t in outputs)}, fcn.outputs says "
            f"{declared}"
        )
    return problems


def check_model(
    props: Mapping[str, str],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    source: str,
) -> ModelMetadata:
    """The metadata of a schema-1 file whose tensors keep the contract; else MetadataError
    naming ``source`` and every problem found."""
    meta = parse_metadata(props, source)
    problems = check_tensors(inputs, outputs, meta)
    if problems:
        raise MetadataError(f"{source}: {'; '.join(problems)}")
    return meta
