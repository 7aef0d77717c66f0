"""Full-resolution inference in bounded memory: an image cut into overlapping tiles of one
size, each tile's labels kept only away from its inner edges, stitched into one label map.

Why a tiled run can equal the whole-image run: an FCN's label at a pixel depends only on the
pixels within its receptive field (``context`` on every side), and on where the pixel falls
on the net's pooling grid. Tiles therefore start at multiples of the output stride
(``align``), so that every pixel keeps its place on the grid, and every label is taken from
the tile whose inner edges are farthest from it. With an overlap of ``2 * context`` between
neighbours each kept label saw exactly what it sees in the whole image; a smaller overlap
trades a few labels near the seams (BENCHMARKS.md measures how many) for less computation.

Tiles of one image all have one size, so they batch. Memory is the tiles in flight and the
label map (one byte a pixel; the confidence map, stitched the same way, one more), never the
whole image's activations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# conv1_1 pads every side by 100 (the reference nets), so the model's memory and time follow
# (H + 200) x (W + 200), not H x W: a 1 x 50,000 image costs as much as a 201 x 50,200 one.
PAD = 100
KEY = "fcn.tiling"
# What a reader assumes of a file without ``fcn.tiling``: the VGG16 FCNs' values (output
# stride 32; FCN-8s, the widest of them, depends on 246 pixels either side).
DEFAULT_ALIGN = 32
DEFAULT_CONTEXT = 246
# The overlap both halves tile with unless told: a quarter of the VGG16 FCNs' exact overlap
# (BENCHMARKS.md: labels that differ from the whole-image run, and the time each costs).
DEFAULT_OVERLAP = 128
# Padded pixels of one pass at the model unless told (BENCHMARKS.md: the memory it takes).
DEFAULT_MAX_MODEL_PIXELS = 8_000_000


class TilingError(ValueError):
    """Tiling parameters that cannot work: ``parameter`` (``tile_size`` or ``tile_overlap``)
    is the one at fault, and the message says why."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


def padded_pixels(height: int, width: int) -> int:
    """The pixels the model really processes for one H x W image: conv1's padding included."""
    return (height + 2 * PAD) * (width + 2 * PAD)


@dataclass(frozen=True)
class Tiling:
    """What a model says about cutting its input: tile origins at multiples of ``align``
    keep the pooling grid; a label depends on ``context`` pixels on every side."""

    align: int = DEFAULT_ALIGN
    context: int = DEFAULT_CONTEXT

    @property
    def exact_overlap(self) -> int:
        """The overlap between neighbouring tiles at which tiled labels equal whole-image ones."""
        return 2 * self.context

    def to_dict(self) -> dict[str, int]:
        return {"align": self.align, "context": self.context}

    def to_json(self) -> str:
        """The value of the ``fcn.tiling`` metadata key."""
        return json.dumps(self.to_dict())


def parse_tiling(props: Mapping[str, str]) -> Tiling:
    """The ``fcn.tiling`` of a model's metadata (the VGG16 FCNs' values when absent);
    ValueError when malformed."""
    if KEY not in props:
        return Tiling()
    value: Any = json.loads(props[KEY])
    if not isinstance(value, dict):
        raise ValueError(f"{KEY} is not an object")
    align, context = int(value["align"]), int(value["context"])
    if align < 1 or context < 0:
        raise ValueError(f"{KEY} needs align >= 1 and context >= 0, got {value}")
    return Tiling(align, context)


@dataclass(frozen=True)
class Axis:
    """Tiles along one side: all ``size`` long, starting at ``origins``; tile i keeps the
    labels in ``[cuts[i], cuts[i + 1])``."""

    size: int
    origins: tuple[int, ...]
    cuts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.origins)


def plan_axis(length: int, longest: int, overlap: int, align: int) -> Axis:
    """The fewest tiles of one size, at most ``longest``, covering ``length`` with at least
    ``overlap`` shared by neighbours; origins are multiples of ``align`` and the last tile
    ends at ``length``, so all tiles have one size.

    Among the sizes that need no more tiles, the smallest wins (the least computation).
    """
    if length <= longest:
        return Axis(length, (0,), (0, length))
    if longest < overlap + 2 * align:
        raise TilingError(
            "tile_overlap",
            f"tiles of {longest} pixels cannot overlap by {overlap} on a grid of {align}; "
            f"an overlap of {overlap} needs tiles of at least {overlap + 2 * align} pixels",
        )

    def tiles_for(size: int) -> int:
        # The last tile starts at length - size, a multiple of align; the others at most
        # ``step`` apart.
        step = (size - overlap) // align * align
        return 1 + -(-(length - size) // step)

    # A size congruent to length modulo align puts the last origin on the grid.
    size = longest - (longest - length) % align
    count = tiles_for(size)
    while size - align >= overlap + align and tiles_for(size - align) == count:
        size -= align
    units = (length - size) // align
    origins = tuple(align * (i * units // (count - 1)) for i in range(count))
    cuts = (
        0,
        *((origins[i] + origins[i - 1] + size) // 2 for i in range(1, count)),
        length,
    )
    return Axis(size, origins, cuts)


@dataclass(frozen=True)
class Tile:
    """One tile: its window on the image and the part of its labels kept."""

    top: int
    left: int
    height: int
    width: int
    keep: tuple[slice, slice]  # in image coordinates

    def window(self, image: NDArray[Any]) -> NDArray[Any]:
        """The tile's pixels (a view of ``image``)."""
        return image[self.top : self.top + self.height, self.left : self.left + self.width]

    def place(self, labels: NDArray[Any], out: NDArray[Any]) -> None:
        """Write the kept part of the tile's ``labels`` (height x width) into ``out``."""
        rows, cols = self.keep
        out[rows, cols] = labels[
            rows.start - self.top : rows.stop - self.top,
            cols.start - self.left : cols.stop - self.left,
        ]


@dataclass(frozen=True)
class TilePlan:
    """How one H x W image is cut."""

    height: int
    width: int
    rows: Axis
    cols: Axis
    overlap: int

    @property
    def count(self) -> int:
        return self.rows.count * self.cols.count

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    @property
    def tile_pixels(self) -> int:
        """Padded pixels of one tile at the model."""
        return padded_pixels(*self.tile_shape)

    @property
    def cost(self) -> int:
        """Padded pixels the model processes over all tiles."""
        return self.count * self.tile_pixels

    def tiles(self) -> Iterator[Tile]:
        """The tiles, row by row."""
        rows, cols = self.rows, self.cols
        for i, top in enumerate(rows.origins):
            for j, left in enumerate(cols.origins):
                keep = (
                    slice(rows.cuts[i], rows.cuts[i + 1]),
                    slice(cols.cuts[j], cols.cuts[j + 1]),
                )
                yield Tile(top, left, rows.size, cols.size, keep)


def largest_side(max_pixels: int) -> int:
    """The longest square tile side whose padded area fits ``max_pixels``."""
    return max(0, int(max_pixels**0.5) - 2 * PAD)


def check_tiles(*, max_pixels: int, overlap: int, tiling: Tiling, tile_size: int = 0) -> int:
    """The longest tile side these parameters give; TilingError when they cannot work on any
    image (whatever its size, so that a bad parameter is refused before any image is read)."""
    if tile_size < 0:
        raise TilingError("tile_size", f"the tile size must be >= 1, got {tile_size}")
    if overlap < 0:
        raise TilingError("tile_overlap", f"the overlap must be >= 0, got {overlap}")
    side = tile_size or largest_side(max_pixels)
    if tile_size and padded_pixels(side, side) > max_pixels:
        raise TilingError(
            "tile_size",
            f"a tile of {side}x{side} is {padded_pixels(side, side)} pixels padded by {PAD} "
            f"on every side; one pass holds at most {max_pixels}",
        )
    smallest = overlap + 2 * tiling.align
    if side < smallest:
        parameter = "tile_size" if tile_size else "tile_overlap"
        raise TilingError(
            parameter,
            f"tiles of {side} pixels cannot overlap by {overlap} on a grid of {tiling.align}; "
            f"an overlap of {overlap} needs tiles of at least {smallest} pixels",
        )
    return side


def plan_tiles(
    height: int,
    width: int,
    *,
    max_pixels: int,
    overlap: int,
    tiling: Tiling,
    tile_size: int = 0,
) -> TilePlan:
    """Tiles of at most ``max_pixels`` padded pixels (and at most ``tile_size`` a side when
    given) covering H x W with ``overlap`` pixels shared by neighbours.

    Of the ways to cut, the one that makes the model process the fewest padded pixels wins:
    every tile pays conv1's padding and its overlap, so a 4000 x 3000 photo is cut into two
    full-height strips rather than four squares, and a 20,000 x 1,000 strip only across.
    """
    check_tiles(max_pixels=max_pixels, overlap=overlap, tiling=tiling, tile_size=tile_size)
    return _cheapest(
        height, width, max_pixels=max_pixels, overlap=overlap, tiling=tiling, tile_size=tile_size
    )


def cut(
    height: int,
    width: int,
    *,
    max_pixels: int,
    overlap: int,
    tiling: Tiling,
    tile_size: int = 0,
    always: bool = False,
) -> TilePlan | None:
    """The tiles an H x W image runs in, or None when it runs whole: it fits one pass of
    ``max_pixels`` and tiles are not asked for (``always``), or one tile covers it.

    Parameters that cannot work raise TilingError even for an image that runs whole.
    """
    check_tiles(max_pixels=max_pixels, overlap=overlap, tiling=tiling, tile_size=tile_size)
    if not always and padded_pixels(height, width) <= max_pixels:
        return None
    plan = _cheapest(
        height, width, max_pixels=max_pixels, overlap=overlap, tiling=tiling, tile_size=tile_size
    )
    return None if plan.count == 1 else plan


def _cheapest(
    height: int, width: int, *, max_pixels: int, overlap: int, tiling: Tiling, tile_size: int
) -> TilePlan:
    """``plan_tiles`` once its parameters are checked."""
    cap = tile_size or max(width, height)
    smallest = overlap + 2 * tiling.align  # the shortest side that can be cut
    best: TilePlan | None = None
    longest_cols = min(width, cap, max_pixels // (2 * PAD + min(height, smallest)) - 2 * PAD)
    for _ in range(64):  # candidate column cuts, from the widest tiles down
        if longest_cols < min(width, smallest):
            break
        cols = plan_axis(width, longest_cols, overlap, tiling.align)
        longest_rows = min(cap, max_pixels // (cols.size + 2 * PAD) - 2 * PAD)
        if longest_rows >= min(height, smallest):
            rows = plan_axis(height, longest_rows, overlap, tiling.align)
            plan = TilePlan(height, width, rows, cols, overlap)
            if best is None or plan.cost < best.cost:
                best = plan
        if best is not None and best.count == 1:
            break  # the image fits whole: nothing costs less
        longest_cols = cols.size - tiling.align
    if best is None:
        raise TilingError(
            "tile_overlap",
            f"no tile of at most {max_pixels} padded pixels can overlap its neighbours by "
            f"{overlap}: tiles need sides of at least {smallest}",
        )
    return best


# [N, h, w, 3] uint8 -> [N, h, w] labels.
Predict = Callable[[NDArray[np.uint8]], NDArray[Any]]
# [N, h, w, 3] uint8 -> per-pixel maps, each [N, h, w] (labels, then confidence, say).
PredictMaps = Callable[[NDArray[np.uint8]], Sequence[NDArray[Any]]]


def segment_tiled(
    image: NDArray[np.uint8], plan: TilePlan, predict: Predict, *, batch_size: int = 1
) -> NDArray[Any]:
    """Run ``predict`` on the tiles of ``image`` (``batch_size`` at a time) and stitch the
    labels into one H x W map."""
    (labels,) = segment_tiled_maps(
        image, plan, lambda batch: (predict(batch),), batch_size=batch_size
    )
    return labels


def segment_tiled_maps(
    image: NDArray[np.uint8], plan: TilePlan, predict: PredictMaps, *, batch_size: int = 1
) -> list[NDArray[Any]]:
    """``segment_tiled`` for a ``predict`` giving several per-pixel maps: each is stitched
    as the labels are (every pixel from the one tile that owns it), so at the exact overlap
    each equals the whole image's map."""
    out: list[NDArray[Any]] = []
    tiles = list(plan.tiles())
    for start in range(0, len(tiles), batch_size):
        group = tiles[start : start + batch_size]
        maps = predict(np.stack([tile.window(image) for tile in group]))
        if not out:
            out = [np.empty((plan.height, plan.width), dtype=m.dtype) for m in maps]
        place(group, maps, out)
    assert out
    return out


def place(tiles: Sequence[Tile], maps: Sequence[NDArray[Any]], out: Sequence[NDArray[Any]]) -> None:
    """Write the kept part of each tile's maps into ``out``: ``maps[k]`` (n x h x w) holds
    map k of the n ``tiles``, stitched into ``out[k]`` (H x W)."""
    for tile_maps, whole in zip(maps, out, strict=True):
        for tile, part in zip(tiles, tile_maps, strict=True):
            tile.place(part, whole)
