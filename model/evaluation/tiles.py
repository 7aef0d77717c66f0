"""When and how an image is cut into tiles, one pass each, for ``fcn predict`` and ``fcn eval``:
the service's rule (``contract.tiling``), chosen by flags and refused naming them."""

from __future__ import annotations

from dataclasses import dataclass

from contract.tiling import (
    DEFAULT_MAX_MODEL_PIXELS,
    DEFAULT_OVERLAP,
    TilePlan,
    Tiling,
    TilingError,
    check_tiles,
    cut,
    padded_pixels,
)
from model.errors import FCNError

# The service's default (FCN_TILE_OVERLAP), so that an image is cut here as it is there. An
# overlap of ``Tiling.exact_overlap`` makes tiled labels equal the whole image's; this one
# changes a few labels near the seams, for less work.
DEFAULT_TILE_OVERLAP = DEFAULT_OVERLAP


class TileError(FCNError, ValueError):
    """Tiling options that cannot work; the message names the flag."""


@dataclass(frozen=True)
class TileOptions:
    """When and how an image is cut into tiles: always when ``size`` > 0 (tiles of at most
    ``size`` a side), else only when its padded size exceeds ``max_model_pixels`` (None:
    never). Neighbouring tiles share ``overlap`` pixels.

    Options that cannot work are refused on construction, before any model or image is read.
    """

    size: int = 0
    overlap: int = DEFAULT_TILE_OVERLAP
    max_model_pixels: int | None = DEFAULT_MAX_MODEL_PIXELS

    def __post_init__(self) -> None:
        if self.size < 0:
            raise TileError(f"--tile-size must be 0 (no forced tiling) or more, got {self.size}")
        if self.overlap < 0:
            raise TileError(f"--tile-overlap must be 0 or more, got {self.overlap}")
        if self.max_model_pixels is not None and self.max_model_pixels < 1:
            raise TileError(f"--max-model-pixels must be 1 or more, got {self.max_model_pixels}")
        self.check(Tiling())  # the grid of every VGG16 FCN

    @property
    def max_pixels(self) -> int | None:
        """Padded pixels one pass may hold; None when nothing is ever tiled."""
        if self.max_model_pixels is not None:
            return self.max_model_pixels
        return padded_pixels(self.size, self.size) if self.size else None

    def check(self, tiling: Tiling) -> None:
        """Refuse options that cannot cut images for a net of ``tiling``."""
        limit = self.max_pixels
        if limit is None:
            return
        try:
            check_tiles(max_pixels=limit, overlap=self.overlap, tiling=tiling, tile_size=self.size)
        except TilingError as exc:
            raise TileError(self._name(exc)) from exc

    def plan(self, height: int, width: int, tiling: Tiling) -> TilePlan | None:
        """How an H x W image is cut for a net of ``tiling``; None when it runs whole."""
        limit = self.max_pixels
        if limit is None:
            return None
        try:
            return cut(
                height,
                width,
                max_pixels=limit,
                overlap=self.overlap,
                tiling=tiling,
                tile_size=self.size,
                always=bool(self.size),
            )
        except TilingError as exc:
            raise TileError(f"a {width}x{height} image: {self._name(exc)}") from exc

    def _name(self, exc: TilingError) -> str:
        """The contract's message, led by the flag at fault (and the limit it depends on)."""
        if exc.parameter == "tile_size":
            flag = f"--tile-size {self.size}"
        else:
            flag = f"--tile-overlap {self.overlap}"
        if self.max_model_pixels is not None:
            flag += f" (with --max-model-pixels {self.max_model_pixels})"
        return f"{flag}: {exc}"
