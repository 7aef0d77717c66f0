"""Class names and colours: PASCAL VOC's 21 classes and its colour map."""

from __future__ import annotations

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


def palette_bytes(colors: list[Color]) -> list[int]:
    """A flat 768-entry PIL palette: ``colors`` first, VOC's colours for the rest, 255 light."""
    full = voc_colormap(256)
    full[: len(colors)] = colors[:256]
    if len(colors) <= IGNORE_INDEX:
        full[IGNORE_INDEX] = IGNORE_COLOR
    return [v for color in full for v in color]
