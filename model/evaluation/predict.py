"""``fcn predict``: label maps, overlays and confidence maps for the images a list of paths
names, from a checkpoint or an exported ONNX file.

Images are collected by the project's one rule (``contract.inputs``), decoded and results
encoded by ``contract``, and an image too large for one pass is cut into tiles by
``contract.tiling``, as the service does, so a file segmented here and posted to
``POST /segment`` gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from contract import encode
from contract.decode import DEFAULT_MAX_PIXELS, ImageError, decode_image, guard_bombs
from contract.inputs import InputError, collect_images
from contract.schema import GEOMETRY_PALETTE, no_confidence
from contract.tiling import DEFAULT_MAX_MODEL_PIXELS
from model.evaluation.geometry_maps import has_geometry, segment_with_geometry
from model.evaluation.outputs import write_confidence_png, write_label_png, write_overlay
from model.evaluation.predictors import (
    PredictError,
    load_predictor,
    segment,
    segment_with_confidence,
)
from model.evaluation.tiles import DEFAULT_TILE_OVERLAP, TileOptions
from model.files import check_folder

# The service's default (FCN_MAX_PIXELS), so that an image read there is read here.
DEFAULT_MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
# What a refusal names as the setter of that limit: `fcn predict`'s flag.
MAX_IMAGE_PIXELS_FLAG = "--max-image-pixels"


def read_photo(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> NDArray[np.uint8]:
    """A user's image as RGB uint8 [H, W, 3], by the contract's decoding rules; at most
    ``max_pixels`` (width x height), and within Pillow's bomb threshold (``guard_bombs``)."""
    try:
        return decode_image(path, max_pixels, MAX_IMAGE_PIXELS_FLAG)
    except ImageError as exc:
        raise PredictError(f"{path} {exc}") from exc
    except OSError as exc:
        raise PredictError(f"{path}: unreadable ({exc.strerror or exc})") from exc


def predict(
    model: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlays: bool = True,
    alpha: float = encode.DEFAULT_ALPHA,
    legend: bool = False,
    device: str = "auto",
    amp: str = "none",
    tile_size: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    max_model_pixels: int = DEFAULT_MAX_MODEL_PIXELS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_unreadable: Callable[[PredictError], None] | None = None,
    shift_and_stitch: int = 1,
    runtime: str = "auto",
    precision: str = "auto",
    confidence: bool = False,
) -> list[Path]:
    """Write ``out/STEM.png`` (label map) and ``out/STEM_overlay.jpg`` for each image (with
    the legend of its classes below, given ``legend``), and with ``confidence``
    ``out/STEM_confidence.png`` (grey, the top class's probability x 255), with a checkpoint
    or an ONNX ``model``; returns the label map paths. An ONNX file without the
    ``confidence`` output cannot give it: ``PredictError`` before any image is read. A
    two-head model (SIFT Flow's) also writes ``out/STEM_geometry.png``, its geometric
    classes' map, as ``?output=geometry`` answers.

    The images are those ``inputs`` name by ``contract.inputs.collect_images``: files named,
    and the images of folders at any depth (hidden files and anything under ``out`` left
    out). STEM is an image's path relative to its folder, without the ending, so
    ``DIR/a/b/cat.jpg`` writes ``out/a/b/cat.png``; two images with one STEM, a missing
    path or no images at all raise ``PredictError`` before anything is written.

    An image whose padded size exceeds ``max_model_pixels``, or any image when ``tile_size``
    is given, is cut into tiles sharing ``tile_overlap`` pixels (``contract.tiling``). An
    image that cannot be read, or has more than ``max_image_pixels``, raises
    ``PredictError``, or, given ``on_unreadable``, is passed to it and skipped. ``out`` is
    created only when there is something to write.

    As the service does, this raises Pillow's process-wide bomb threshold to
    ``max_image_pixels`` and makes its bomb warning an error.
    """
    tiles = TileOptions(tile_size, tile_overlap, max_model_pixels)
    guard_bombs(max_image_pixels, MAX_IMAGE_PIXELS_FLAG)
    out_dir = check_folder(out)
    try:
        images = collect_images(inputs, out_dir)
    except InputError as exc:
        raise PredictError(str(exc)) from exc
    predictor = load_predictor(
        model, device, amp, shift_and_stitch, runtime=runtime, precision=precision
    )
    tiles.check(predictor.tiling)
    if confidence and not predictor.has_confidence:
        raise PredictError(no_confidence(str(model)))
    two_head = has_geometry(predictor)
    written: list[Path] = []
    for path, stem in images.items():
        try:
            image = read_photo(path, max_image_pixels)
        except PredictError as exc:
            if on_unreadable is None:
                raise
            on_unreadable(exc)
            continue
        folder = out_dir / stem.parent
        folder.mkdir(parents=True, exist_ok=True)
        if two_head:  # both heads from one run
            labels, geometry = segment_with_geometry(predictor, image, tiles)
            write_label_png(geometry, GEOMETRY_PALETTE, folder / f"{stem.name}_geometry.png")
        if confidence:
            labels, certainty = segment_with_confidence(predictor, image, tiles)
            write_confidence_png(certainty, folder / f"{stem.name}_confidence.png")
        elif not two_head:
            labels = segment(predictor, image, tiles)
        written.append(write_label_png(labels, predictor.palette, folder / f"{stem.name}.png"))
        if overlays:
            overlay_path = folder / f"{stem.name}_overlay.jpg"
            classes = predictor.classes if legend else None
            write_overlay(
                image, labels, predictor.palette, overlay_path, alpha, legend_classes=classes
            )
    return written
