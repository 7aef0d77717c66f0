"""A data set's class-name file: names and colours from ``classes.json`` or ``.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.palette import Color, voc_colormap
from model.data.datasets import DataError
from model.files import read_json_or_yaml

# A classes file: {"classes": [names], "palette": [[r, g, b], ...]} (palette optional).
CLASSES_FILES = ("classes.json", "classes.yaml", "classes.yml")


def find_classes_file(root: Path) -> Path | None:
    """The first of ``CLASSES_FILES`` in ``root``, if any."""
    return next((root / n for n in CLASSES_FILES if (root / n).is_file()), None)


def load_classes_file(path: Path) -> tuple[list[str], list[Color]]:
    """Class names and colours from JSON or YAML: a list of names, or a mapping with
    ``classes`` (names, or {name, color} entries) and an optional ``palette``."""
    try:
        data = read_json_or_yaml(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable classes file ({exc})") from exc
    if isinstance(data, list):
        data = {"classes": data}
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DataError(f"{path}: expected a list of class names or a mapping with 'classes'")
    names: list[str] = []
    colors: list[Any] = []
    for entry in data["classes"]:
        if isinstance(entry, dict):
            names.append(str(entry.get("name", "")))
            if "color" in entry:
                colors.append(entry["color"])
        else:
            names.append(str(entry))
    if "palette" in data:
        colors = list(data["palette"])
    if len(names) < 2 or len(set(names)) != len(names) or "" in names:
        raise DataError(f"{path}: need at least 2 distinct, non-empty class names, got {names}")
    palette = voc_colormap(len(names))
    if colors:
        if len(colors) != len(names):
            raise DataError(f"{path}: {len(colors)} colours for {len(names)} classes")
        try:
            palette = [_color(c) for c in colors]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: bad colour ({exc})") from exc
    return names, palette


def _color(value: Any) -> Color:
    r, g, b = (int(v) for v in value)
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"{value} is not RGB in 0..255")
    return r, g, b


# The reference's published class lists, in model output order (fcn.berkeleyvision.org,
# data/*/classes*.txt). PASCAL-Context's 59-class task (Mottaghi et al., CVPR 2014) plus
# background, 0.
CONTEXT_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet",
    "ceiling", "clothes", "computer", "cup", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign",
    "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track", "tree",
    "truck", "wall", "water", "window", "wood",
)  # fmt: skip
# NYUDv2's 40-class task (Gupta et al., CVPR 2013); the files' 0 (void) becomes 255.
NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
# SIFT Flow's 33 semantic classes (the files' 0, void, becomes 255) and its 3 geometric ones
# (the files' -1 and 0, void, become 255). Cow, desert and moon never occur in its test set.
SIFTFLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
    "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
    "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase",
    "streetlight", "sun", "tree", "window",
)  # fmt: skip
SIFTFLOW_GEOMETRY_CLASSES = ("sky", "horizontal", "vertical")
