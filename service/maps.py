"""The per-pixel maps of a prediction: how tiles stitch them (labels, confidence, geometry),
which one an answer is drawn from (``?output=``: the labels with the model's classes and
palette, or a two-head file's geometry with its own), and the refusal of one a file lacks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from contract.palette import color_table
from contract.schema import GEOMETRY, GEOMETRY_PALETTE, no_geometry
from contract.tiling import Tile
from service.errors import InvalidParameterError
from service.prediction import Prediction
from service.runtime import ModelInfo

Output = Literal["labels", "geometry"]
GEOMETRY_TABLE = color_table(GEOMETRY_PALETTE)


def check_output(output: Output, info: ModelInfo, confidence_asked: str | None) -> None:
    """Refuse (422) the geometry of a file without it, and its confidence (the confidence is
    the labels'; ``confidence_asked`` names the parameter that asks for it, if any)."""
    if output != GEOMETRY:
        return
    if not info.meta.has_geometry:
        raise InvalidParameterError(f"?output=geometry: {no_geometry(repr(info.name))}")
    if confidence_asked is not None:
        raise InvalidParameterError(
            f"{confidence_asked}: the confidence is the labels'; ?output=geometry has none"
        )


def drawn(
    prediction: Prediction, output: Output, info: ModelInfo, table: NDArray[np.uint8]
) -> tuple[NDArray[Any], NDArray[np.uint8], Sequence[str]]:
    """The map ``output`` names, its colour table and its class names (``table``: the
    model's colours, for the labels)."""
    if output == GEOMETRY:
        assert prediction.geometry is not None  # check_output refused files without it
        return prediction.geometry, GEOMETRY_TABLE, info.meta.geometry_classes
    return prediction.labels, table, info.meta.classes


def place(
    tiles: list[Tile],
    predictions: list[Prediction],
    out: NDArray[Any],
    confidence: NDArray[np.uint8] | None,
    geometry: NDArray[np.uint8] | None = None,
) -> None:
    """Each tile's kept labels into ``out`` and, given ``confidence`` or ``geometry``, its
    kept maps into those: the same pixels from the same tile, so the maps stitch alike."""
    for tile, prediction in zip(tiles, predictions, strict=True):
        tile.place(prediction.labels, out)
        if confidence is not None:
            assert prediction.confidence is not None  # the runtime gives it with the labels
            tile.place(prediction.confidence, confidence)
        if geometry is not None:
            assert prediction.geometry is not None  # the runtime gives it with the labels
            tile.place(prediction.geometry, geometry)
