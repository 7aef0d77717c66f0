"""Tiles: how an image is cut, and that stitched labels are the whole-image labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from contract.schema import check_model, session_tensors
from contract.tiling import (
    DEFAULT_OVERLAP,
    TilePlan,
    Tiling,
    TilingError,
    cut,
    padded_pixels,
    parse_tiling,
    plan_tiles,
    segment_tiled,
    segment_tiled_maps,
)
from model.data.synthetic import render_sample, sample_rng
from tests.factory import exported

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "fcn8s.onnx"
VGG = Tiling()  # the VGG16 FCNs: align 32, context 246


def check_plan(plan: TilePlan, max_pixels: int) -> None:
    """Every property a stitched result relies on."""
    tiles = list(plan.tiles())
    assert len(tiles) == plan.count
    covered = np.zeros((plan.height, plan.width), dtype=np.int32)
    for tile in tiles:
        assert (tile.height, tile.width) == plan.tile_shape  # one size: they batch
        assert padded_pixels(tile.height, tile.width) <= max_pixels
        assert tile.top % VGG.align == 0
        assert tile.left % VGG.align == 0  # every pixel keeps its place on the grid
        assert tile.top + tile.height <= plan.height
        assert tile.left + tile.width <= plan.width
        rows, cols = tile.keep
        covered[rows, cols] += 1
        # The kept part is at least half the overlap from every inner edge of its tile.
        margin = plan.overlap // 2
        if tile.top > 0:
            assert rows.start - tile.top >= margin
        if tile.top + tile.height < plan.height:
            assert tile.top + tile.height - rows.stop >= margin
        if tile.left > 0:
            assert cols.start - tile.left >= margin
        if tile.left + tile.width < plan.width:
            assert tile.left + tile.width - cols.stop >= margin
    assert (covered == 1).all()  # every label comes from exactly one tile


@pytest.mark.slow
@pytest.mark.parametrize(
    ("height", "width"),
    [(3000, 4000), (10_000, 10_000), (1000, 20_000), (20_000, 333), (2701, 2699), (40_000, 33)],
)
@pytest.mark.parametrize("overlap", [0, DEFAULT_OVERLAP, VGG.exact_overlap])
def test_plans_cover_every_pixel_once_with_tiles_of_one_size(
    height: int, width: int, overlap: int
) -> None:
    plan = plan_tiles(height, width, max_pixels=8_000_000, overlap=overlap, tiling=VGG)
    assert plan.count > 1
    check_plan(plan, 8_000_000)


def test_odd_sizes_and_small_tiles() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 3000, size=2))
        overlap = int(rng.integers(0, 300))
        tile_size = int(rng.integers(overlap + 2 * VGG.align, overlap + 1200))
        plan = plan_tiles(
            height, width, max_pixels=10**9, overlap=overlap, tiling=VGG, tile_size=tile_size
        )
        assert max(plan.tile_shape) <= tile_size
        check_plan(plan, 10**9)


def test_an_image_that_fits_is_one_tile_and_the_cut_is_the_cheapest() -> None:
    whole = plan_tiles(2400, 2600, max_pixels=8_000_000, overlap=128, tiling=VGG)
    assert (whole.count, whole.tile_shape) == (1, (2400, 2600))
    # A 12 MP photo: two strips of the full height rather than four squares, which would
    # pay conv1's padding and the overlap on both axes.
    photo = plan_tiles(3000, 4000, max_pixels=8_000_000, overlap=128, tiling=VGG)
    assert (photo.rows.count, photo.cols.count) == (1, 2)
    squares = plan_tiles(3000, 4000, max_pixels=8_000_000, overlap=128, tiling=VGG, tile_size=2600)
    assert photo.cost < squares.cost
    # A long strip is cut across only.
    strip = plan_tiles(1000, 20_000, max_pixels=8_000_000, overlap=128, tiling=VGG)
    assert strip.rows.count == 1


def test_an_image_runs_whole_unless_it_must_or_is_asked_to_be_cut() -> None:
    common = {"max_pixels": 8_000_000, "overlap": 128, "tiling": VGG}
    assert cut(2400, 2600, **common) is None  # fits one pass
    assert cut(2400, 2600, **common, tile_size=1000, always=True).count == 9
    assert cut(2400, 2600, **common, always=True) is None  # one tile covers it
    assert cut(3000, 4000, **common).count == 2
    # A parameter that cannot work is refused even for an image that would run whole.
    with pytest.raises(TilingError, match="a tile of 3000x3000") as caught:
        cut(10, 10, **common, tile_size=3000)
    assert caught.value.parameter == "tile_size"


@pytest.mark.parametrize(
    ("options", "parameter", "words"),
    [
        ({"tile_size": 3000}, "tile_size", "a tile of 3000x3000 is 10240000 pixels"),
        ({"tile_size": 200}, "tile_size", "an overlap of 190 needs tiles of at least 254"),
        ({"overlap": 5000}, "tile_overlap", "cannot overlap by 5000"),
        ({"overlap": -1}, "tile_overlap", "must be >= 0"),
    ],
)
def test_impossible_parameters_name_the_one_at_fault(
    options: dict[str, int], parameter: str, words: str
) -> None:
    kwargs = {"overlap": 190, **options}
    with pytest.raises(TilingError, match=words) as caught:
        plan_tiles(500, 500, max_pixels=8_000_000, tiling=VGG, **kwargs)
    assert caught.value.parameter == parameter


def test_tiling_metadata_has_a_default_and_is_checked() -> None:
    assert parse_tiling({}) == VGG
    assert parse_tiling({"fcn.tiling": '{"align": 8, "context": 100}'}) == Tiling(8, 100)
    for bad in ('{"align": 0, "context": 1}', "[1, 2]", '{"align": 8}', "{"):
        with pytest.raises((ValueError, KeyError)):
            parse_tiling({"fcn.tiling": bad})


def mosaic(height: int, width: int, cell: int = 160) -> NDArray[np.uint8]:
    """Synthetic scenes at the scale the demo model was trained on, side by side."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    k = 0
    for top in range(0, height, cell):
        for left in range(0, width, cell):
            scene, _ = render_sample(sample_rng(1, "val", k), (cell, cell))
            image[top : top + cell, left : left + cell] = scene[: height - top, : width - left]
            k += 1
    return image


@pytest.fixture(scope="module")
def demo() -> ort.InferenceSession:
    return ort.InferenceSession(str(DEMO), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, batch: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.asarray(session.run(["labels"], {"image": np.ascontiguousarray(batch)})[0])


@pytest.mark.parametrize(
    ("height", "width", "tile_size"), [(517, 803, 600), (517, 803, 700), (611, 389, 580)]
)
def test_tiles_at_the_exact_overlap_give_the_whole_image_labels(
    demo: ort.InferenceSession, height: int, width: int, tile_size: int
) -> None:
    meta = check_model(
        demo.get_modelmeta().custom_metadata_map,
        session_tensors(demo.get_inputs()),
        session_tensors(demo.get_outputs()),
        str(DEMO),
    )
    image = mosaic(height, width)
    whole = run(demo, image[None])[0]
    plan = plan_tiles(
        height,
        width,
        max_pixels=10**9,
        overlap=meta.tiling.exact_overlap,
        tiling=meta.tiling,
        tile_size=tile_size,
    )
    assert plan.count > 1
    tiled = segment_tiled(image, plan, lambda batch: run(demo, batch), batch_size=2)
    assert tiled.dtype == whole.dtype
    np.testing.assert_array_equal(tiled, whole)


@pytest.mark.slow
def test_confidence_tiles_stitch_as_labels_do_and_equal_one_pass_at_the_exact_overlap() -> None:
    _, path = exported("fcn8s")  # labels and confidence, as `fcn export` writes them
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def maps(batch: NDArray[np.uint8]) -> list[NDArray[np.uint8]]:
        return list(session.run(["labels", "confidence"], {"image": np.ascontiguousarray(batch)}))

    image = mosaic(517, 803)
    labels, confidence = (m[0] for m in maps(image[None]))
    plan = plan_tiles(
        517, 803, max_pixels=10**9, overlap=VGG.exact_overlap, tiling=VGG, tile_size=600
    )
    assert plan.count > 1
    tiled_labels, tiled_confidence = segment_tiled_maps(image, plan, maps, batch_size=2)
    np.testing.assert_array_equal(tiled_labels, labels)
    assert tiled_confidence.dtype == np.uint8
    np.testing.assert_array_equal(tiled_confidence, confidence)
    assert len(np.unique(confidence)) > 10  # a real map, not a constant


def test_the_default_overlap_differs_only_near_seams_and_rarely(
    demo: ort.InferenceSession,
) -> None:
    # BENCHMARKS.md measures this bound: at the default overlap (a quarter of the exact one)
    # a label differs from the whole-image run only within the context of a seam, and at
    # well under 0.1% of the pixels.
    image = mosaic(701, 1003)
    whole = run(demo, image[None])[0]
    plan = plan_tiles(
        701, 1003, max_pixels=10**9, overlap=DEFAULT_OVERLAP, tiling=VGG, tile_size=400
    )
    assert plan.count >= 6
    tiled = segment_tiled(image, plan, lambda batch: run(demo, batch))
    differ = tiled != whole
    assert differ.mean() < 0.001
    near = np.zeros_like(differ)
    for seam in plan.rows.cuts[1:-1]:
        near[max(0, seam - VGG.context) : seam + VGG.context] = True
    for seam in plan.cols.cuts[1:-1]:
        near[:, max(0, seam - VGG.context) : seam + VGG.context] = True
    assert not (differ & ~near).any()
