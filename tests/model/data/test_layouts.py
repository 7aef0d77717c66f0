"""The layouts a data set comes in (VOC, SBD .mat files, a plain folder), found and opened
on data the tests write, and the packaged seg11valid list."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.palette import VOC_CLASSES, voc_colormap
from model.data.checks import check_dataset
from model.data.datasets import DataError
from model.data.layouts import (
    available_splits,
    detect_format,
    folder_dataset,
    open_dataset,
    packaged_split,
    sbd_dataset,
    voc_dataset,
)
from model.data.synthetic import SYNTH_CLASSES
from tests.model.data.sets import FOLDER_CLASSES, SIZE, assert_pair, write_folder, write_sbd


def test_voc_layout_from_the_generator(synth_root: Path) -> None:
    train = voc_dataset(synth_root, "train")
    val = open_dataset(synth_root, "val")
    assert detect_format(synth_root) == "voc"
    assert available_splits(synth_root) == ["train", "trainval", "val"]
    assert (len(train), len(val)) == (6, 3)
    assert train.classes == list(SYNTH_CLASSES)
    assert train.palette == voc_colormap(len(SYNTH_CLASSES))
    target = assert_pair(train, 0, SIZE)
    # The palette PNG's indices are the labels, exactly.
    with Image.open(synth_root / "SegmentationClass" / "train_000000.png") as png_file:
        png = np.asarray(png_file)
    assert np.array_equal(target, png)
    assert train.describe() == f"voc:{synth_root} (train, 6 images)"


def test_voc_found_below_vocdevkit_and_defaults_to_voc_classes(
    voc_copy: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "downloads" / "VOCdevkit" / "VOC2012"
    shutil.move(voc_copy, nested)
    (nested / "classes.json").unlink()
    dataset = open_dataset(tmp_path / "downloads", "trainval")
    assert dataset.root == nested
    assert len(dataset) == 9
    assert dataset.classes == list(VOC_CLASSES)


def test_seg11valid_ships_736_unique_ids_and_is_used_when_the_folder_lacks_it(
    voc_copy: Path,
) -> None:
    ids = packaged_split("seg11valid")
    assert len(ids) == 736
    assert len(set(ids)) == 736
    assert ids[0] == "2007_000033"
    assert all(len(i) == 11 and i[4] == "_" for i in ids)
    dataset = voc_dataset(voc_copy, "seg11valid")
    assert [s.id for s in dataset.samples] == ids
    # The files are not there: the check names them.
    problems = check_dataset(dataset, indices=[0])
    assert str(problems[0]) == f"{voc_copy}/JPEGImages/2007_000033.jpg: missing image"


def test_unknown_split_lists_the_ones_there(synth_root: Path) -> None:
    with pytest.raises(
        DataError, match=r"test\.txt: no such split list \(found: train, trainval, val"
    ):
        voc_dataset(synth_root, "test")


def test_sbd_mat_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets = {
        f"2008_00000{i}": rng.integers(0, 21, (30 + i, 50), dtype=np.uint8) for i in range(3)
    }
    targets["2008_000000"][0, :] = 255
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    write_sbd(root, targets)
    assert detect_format(tmp_path) == "sbd"
    assert available_splits(tmp_path) == ["train", "val"]
    train = sbd_dataset(tmp_path, "train")
    assert len(train) == 2
    assert train.classes == list(VOC_CLASSES)
    for i, (name, expected) in enumerate(list(targets.items())[:2]):
        got = assert_pair(train, i, expected.shape)
        assert np.array_equal(got, expected), name
    assert check_dataset(open_dataset(root, "val", "sbd")) == []


@pytest.mark.parametrize("colors", [False, True], ids=["grey-ids", "rgb-colours"])
def test_folder_layout(tmp_path: Path, colors: bool) -> None:
    targets = write_folder(tmp_path, colors)
    assert detect_format(tmp_path) == "folder"
    assert available_splits(tmp_path) == ["all"]
    everything = folder_dataset(tmp_path)
    assert [s.id for s in everything.samples] == ["a", "b", "c"]
    assert everything.classes == FOLDER_CLASSES
    for i, expected in enumerate(targets.values()):
        assert np.array_equal(assert_pair(everything, i, expected.shape), expected)
    (tmp_path / "val.txt").write_text("c\n")
    assert [s.id for s in open_dataset(tmp_path, "val").samples] == ["c"]
    with pytest.raises(DataError, match=r"train\.txt: no such split list"):
        folder_dataset(tmp_path, "train")


def test_folder_takes_every_image_kind_and_skips_other_files(tmp_path: Path) -> None:
    write_folder(tmp_path)
    Image.new("RGB", (24, 20)).save(tmp_path / "images" / "d.gif")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert [s.id for s in folder_dataset(tmp_path).samples] == ["a", "b", "c", "d"]


def test_folder_without_classes_file_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "classes.yaml").unlink()
    with pytest.raises(DataError, match=r"no classes file \(classes\.json or classes\.yaml"):
        folder_dataset(tmp_path)


def test_unknown_layout_and_format_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path}: not a known data layout"):
        open_dataset(tmp_path, "train")
    with pytest.raises(DataError, match="unknown data format 'coco'; choose one of auto, voc"):
        open_dataset(tmp_path, "train", "coco")
