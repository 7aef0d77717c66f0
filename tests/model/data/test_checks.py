"""The data check names every bad file, in code and through ``fcn data check``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from contract.palette import palette_bytes, voc_colormap
from model.cli import main
from model.data.checks import check_dataset, check_splits, format_problems
from model.data.layouts import folder_dataset, sbd_dataset, voc_dataset
from tests.model.data.sets import write_folder, write_mask, write_sbd


# Each kind of bad data, made in a copy of the synthetic set; the check must name the file.
def _missing_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / "train_000002.png"
    path.unlink()
    return path, "missing label file for train_000002.jpg"


def _size_mismatch(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / "train_000001.png"
    with Image.open(path) as label:
        cropped = label.crop((0, 0, 30, 40))
    cropped.save(path)
    return path, "label is 30x40 but image train_000001.jpg is 48x40"


def _label_out_of_range(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / "val_000001.png"
    with Image.open(path) as label_file:
        target = np.array(label_file)
    target[3, 3] = 6  # 6 classes: 0..5 and 255 are fine
    target[4, 4] = 200
    label = Image.fromarray(target, mode="P")
    label.putpalette(palette_bytes(voc_colormap(6)))
    label.save(path)
    return path, "label values [6, 200] outside [0, 6) and not 255"


def _unreadable_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / "train_000003.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return path, "unreadable image"


def _not_an_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / "val_000002.jpg"
    path.write_bytes(b"GIF8 but not quite")
    return path, "unreadable image (is not an image format we read"


def _unreadable_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / "train_000004.png"
    path.write_bytes(b"not a png at all")
    return path, "unreadable label file"


BAD_DATA = [
    _missing_mask,
    _size_mismatch,
    _label_out_of_range,
    _unreadable_image,
    _not_an_image,
    _unreadable_mask,
]


@pytest.mark.parametrize("spoil", BAD_DATA, ids=lambda f: f.__name__.strip("_"))
def test_bad_data_is_reported_with_the_file(
    voc_copy: Path,
    spoil: Callable[[Path], tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, message = spoil(voc_copy)
    split = "val" if "val_" in path.name else "train"
    problems = check_dataset(voc_dataset(voc_copy, split))
    assert len(problems) == 1
    assert problems[0].path == path
    assert problems[0].message.startswith(message)
    # The command checks every split and exits 1 with the file named.
    assert main(["data", "check", str(voc_copy)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: {message}" in out
    assert "1 problem(s) found" in out


def test_every_split_is_opened_and_each_file_checked_once(voc_copy: Path) -> None:
    path, _ = _missing_mask(voc_copy)
    datasets, problems = check_splits(voc_copy)
    assert [d.split for d in datasets] == ["train", "trainval", "val"]
    assert [p.path for p in problems] == [path]  # in train and trainval, reported once
    _, only_val = check_splits(voc_copy, "voc", ["val"])
    assert only_val == []


def test_photo_size_is_the_one_shown_after_exif_orientation(tmp_path: Path) -> None:
    # Stored 24 wide and 20 high, shown (orientation 6: rotated 90 degrees) 20 wide, 24 high.
    targets = write_folder(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (24, 20), (90, 120, 150)).save(tmp_path / "images" / "a.jpg", exif=exif)
    write_mask(tmp_path / "masks" / "a.png", np.ascontiguousarray(targets["a"].T))
    assert check_dataset(folder_dataset(tmp_path)) == []


def test_rgb_mask_with_a_foreign_colour_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path, colors=True)
    mask = tmp_path / "masks" / "b.png"
    with Image.open(mask) as mask_file:
        rgb = np.array(mask_file)
    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    problems = check_dataset(folder_dataset(tmp_path))
    assert [str(p) for p in problems] == [f"{mask}: colour (1, 2, 3) is no class's colour"]


def test_sbd_file_without_segmentation_is_named(tmp_path: Path) -> None:
    write_sbd(tmp_path, {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    savemat(tmp_path / "cls" / "a.mat", {"other": np.zeros(3)})
    problems = check_dataset(sbd_dataset(tmp_path, "train"))
    assert [str(p) for p in problems] == [
        f"{tmp_path}/cls/a.mat: no GTcls.Segmentation in this .mat file"
    ]


def test_format_problems_says_how_many_more() -> None:
    assert (
        format_problems(["a: x", "b: y", "c: z"], limit=2) == "a: x\nb: y\n... and 1 more problems"
    )


def test_data_check_passes_a_good_set(synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(synth_root), "--split", "val"]) == 0
    assert "voc:" in capsys.readouterr().out


def test_data_check_names_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such data folder" in capsys.readouterr().err
