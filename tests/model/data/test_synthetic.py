"""The synthetic data set: VOC's exact layout, deterministic per seed, and the properties
that make it a segmentation test (shapes, overlapping colours, boundaries, thin parts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.palette import voc_colormap
from model.cli import main
from model.data.synthetic import (
    SYNTH_CLASSES,
    render_sample,
    sample_rng,
    void_band,
    write_synthetic,
)


def test_voc_layout_and_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert (
        main(["data", "synth", "--out", str(out), "--train", "3", "--val", "2", "--size", "24x32"])
        == 0
    )
    assert "wrote 3 train + 2 val images (24x32)" in capsys.readouterr().out
    lists = out / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == [
        "train_000000",
        "train_000001",
        "train_000002",
    ]
    assert (lists / "val.txt").read_text().split() == ["val_000000", "val_000001"]
    assert len((lists / "trainval.txt").read_text().split()) == 5
    with Image.open(out / "JPEGImages" / "val_000001.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 24))
    with Image.open(out / "SegmentationClass" / "val_000001.png") as label:
        assert (label.format, label.mode, label.size) == ("PNG", "P", (32, 24))
        palette = label.getpalette()
    assert palette is not None
    assert palette[3:6] == list(voc_colormap(2)[1])  # class 1 drawn in VOC's colour
    classes = json.loads((out / "classes.json").read_text())
    assert classes["classes"] == list(SYNTH_CLASSES)
    assert classes["palette"] == [list(c) for c in voc_colormap(len(SYNTH_CLASSES))]
    assert not list(tmp_path.glob(".synth*"))  # no temporary folder left behind
    plain = tmp_path / "plain"
    plain.mkdir()
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkdtemp's 0700


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", 2, 1, (32, 32), seed=5)
    b = write_synthetic(tmp_path / "b", 3, 1, (32, 32), seed=5)
    c = write_synthetic(tmp_path / "c", 2, 1, (32, 32), seed=6)
    for name in (
        "JPEGImages/train_000001.jpg",
        "SegmentationClass/train_000001.png",
        "JPEGImages/val_000000.jpg",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes()  # independent of the counts
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_refuses_to_write_over_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path / "taken"), "--train", "1"]) == 2
    assert "--out:" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "12by4"]) == 2
    assert "--size: '12by4' is not HxW" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val", "0"], "--val 0: must be at least 1"),
        (["--train", "-1"], "--train -1: must be at least 1"),
        (["--band", "-2"], "--band -2: must be 0 or more"),
    ],
)
def test_counts_that_would_make_an_unusable_data_set_are_refused_by_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "16", *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_void_band_straddles_every_boundary() -> None:
    target = np.zeros((8, 8), np.uint8)
    target[2:6, 2:6] = 3
    band = void_band(target, 1)
    # One pixel either side of the square's outline; its inside and far outside are kept.
    assert band[2, 3]
    assert band[1, 3]
    assert not band[0, 3]
    assert not band[3, 3]
    # The square's 12 outline pixels and the 16 outside pixels that share an edge with them.
    assert int(band.sum()) == 12 + 16
    assert void_band(target, 2).sum() > band.sum()


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_sample(sample_rng(0, "train", i), (96, 96)) for i in range(40)]


def test_objects_are_labelled_with_ignored_boundaries(
    samples: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    present = set()
    for image, target in samples:
        assert image.shape == (96, 96, 3)
        assert image.dtype == np.uint8
        values = set(np.unique(target).tolist())
        assert values <= {*range(len(SYNTH_CLASSES)), 255}
        present |= values
        # No labelled pixel touches a pixel of another class: the 255 band is between.
        horizontal = target[:, 1:] != target[:, :-1]
        labelled = (target[:, 1:] != 255) & (target[:, :-1] != 255)
        assert not (horizontal & labelled).any()
    assert present == {*range(len(SYNTH_CLASSES)), 255}
    # Objects cover a real share of the pixels, yet background dominates as in VOC.
    targets = np.stack([t for _, t in samples])
    foreground = ((targets > 0) & (targets < 255)).mean()
    assert 0.05 < foreground < 0.4
    assert 0.02 < (targets == 255).mean() < 0.15


def test_colour_alone_does_not_name_the_class(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Mean hue per object: neighbouring classes' hue ranges overlap."""
    import colorsys

    hues: dict[int, list[float]] = {c: [] for c in range(1, len(SYNTH_CLASSES))}
    for image, target in samples:
        for c, found in hues.items():
            mask = target == c
            if mask.sum() > 20:
                r, g, b = image[mask].mean(0) / 255
                found.append(colorsys.rgb_to_hsv(r, g, b)[0])
    # A nearest-centroid rule on hue misnames many objects.
    centres = {
        c: np.angle(np.mean(np.exp(2j * np.pi * np.array(h)))) / (2 * np.pi) % 1
        for c, h in hues.items()
    }
    wrong = total = 0
    for c, values in hues.items():
        for h in values:
            distance = {k: min(abs(h - m), 1 - abs(h - m)) for k, m in centres.items()}
            wrong += min(distance, key=distance.__getitem__) != c
            total += 1
    assert total > 50
    assert wrong / total > 0.15


def test_thin_objects_are_thinner_than_a_stride_8_cell(
    samples: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Bars and ring walls: most of their labelled pixels lie within 3 px of the background."""
    bar, ring = SYNTH_CLASSES.index("bar"), SYNTH_CLASSES.index("ring")
    near = count = 0
    for _, target in samples:
        thin = (target == bar) | (target == ring)
        other = (target != bar) & (target != ring)
        grown = other.copy()
        for _ in range(3):
            grown[1:] |= grown[:-1].copy()
            grown[:-1] |= grown[1:].copy()
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
        near += int((thin & grown).sum())
        count += int(thin.sum())
    assert count > 500
    assert near / count > 0.8
