"""Class names and colours: PASCAL VOC's 21 classes, its colour map, and the one colour table
every label PNG and overlay is drawn with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255
# The colour VOC draws for IGNORE_INDEX (object boundaries and "difficult" regions).
IGNORE_COLOR = (224, 224, 192)

Color = tuple[int, int, int]


def voc_colormap(n: int = 256) -> list[Color]:
    """The VOC devkit's colour map: class i's bits spread over the high bits of R, G, B."""
    colors: list[Color] = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


def color_table(palette: Sequence[Sequence[int]]) -> NDArray[np.uint8]:
    """[max(256, len(palette)), 3] uint8 colours of class ids: the model's ``palette`` first,
    VOC's colours for the ids past it, and IGNORE_COLOR at 255 unless a class owns 255.

    The one rule for ids a palette does not cover, so a label PNG looks the same whichever
    half wrote it and an id past the palette still reads as VOC's.
    """
    table = np.asarray(voc_colormap(256), dtype=np.uint8)
    if len(palette) > 256:
        table = np.zeros((len(palette), 3), dtype=np.uint8)
    if len(palette) <= IGNORE_INDEX:
        table[IGNORE_INDEX] = IGNORE_COLOR
    if len(palette):
        table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return table


def palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    """A flat 768-entry Pillow palette of ``color_table(palette)``."""
    return [int(v) for v in color_table(palette)[:256].ravel()]
