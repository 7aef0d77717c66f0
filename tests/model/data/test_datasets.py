"""The loaders (VOC layout, SBD .mat files, a plain folder) on data the tests write, the
packaged seg11valid list, and the data check that names every bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from scipy.sparse import csc_matrix
from torchvision import tv_tensors

from contract.palette import IGNORE_COLOR, VOC_CLASSES, palette_bytes, voc_colormap
from model.cli import main
from model.data.datasets import (
    DataError,
    SegmentationDataset,
    check_dataset,
    detect_format,
    folder_dataset,
    load_classes_file,
    open_dataset,
    packaged_split,
    sbd_dataset,
    voc_dataset,
)
from model.data.synthetic import SYNTH_CLASSES, write_synthetic

SIZE = (40, 48)  # H, W


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "voc", 6, 3, SIZE, seed=1)


@pytest.fixture
def voc_copy(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "voc"))


def assert_pair(dataset: SegmentationDataset, index: int, size: tuple[int, int]) -> np.ndarray:
    image, target = dataset[index]
    assert isinstance(image, tv_tensors.Image)
    assert isinstance(target, tv_tensors.Mask)
    assert image.dtype == torch.uint8
    assert image.shape == (3, *size)
    assert target.shape == size
    values = set(target.unique().tolist())
    assert values <= {*range(dataset.num_classes), 255}
    return target.numpy()


def test_voc_layout_from_the_generator(synth_root: Path) -> None:
    train = voc_dataset(synth_root, "train")
    val = open_dataset(synth_root, "val")
    assert detect_format(synth_root) == "voc"
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


def write_sbd(root: Path, targets: dict[str, np.ndarray]) -> None:
    (root / "img").mkdir(parents=True)
    (root / "cls").mkdir()
    rng = np.random.default_rng(0)
    for name, target in targets.items():
        h, w = target.shape
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "img" / f"{name}.jpg"
        )
        # SBD's layout: a GTcls struct with Segmentation (uint8 ids) and per-class Boundaries.
        boundaries = np.empty((20, 1), dtype=object)
        for k in range(20):
            boundaries[k, 0] = csc_matrix((h, w), dtype=np.uint8)
        gtcls = {
            "Segmentation": target,
            "Boundaries": boundaries,
            "CategoriesPresent": np.unique(target[(target > 0) & (target < 255)]).astype(np.uint8),
        }
        savemat(root / "cls" / f"{name}.mat", {"GTcls": gtcls})
    names = list(targets)
    (root / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (root / "val.txt").write_text(names[-1] + "\n")


def test_sbd_mat_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets = {
        f"2008_00000{i}": rng.integers(0, 21, (30 + i, 50), dtype=np.uint8) for i in range(3)
    }
    targets["2008_000000"][0, :] = 255
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    write_sbd(root, targets)
    assert detect_format(tmp_path) == "sbd"
    train = sbd_dataset(tmp_path, "train")
    assert len(train) == 2
    assert train.classes == list(VOC_CLASSES)
    for i, (name, expected) in enumerate(list(targets.items())[:2]):
        got = assert_pair(train, i, expected.shape)
        assert np.array_equal(got, expected), name
    assert check_dataset(open_dataset(root, "val", "sbd")) == []


def test_sbd_file_without_segmentation_is_named(tmp_path: Path) -> None:
    write_sbd(tmp_path, {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    savemat(tmp_path / "cls" / "a.mat", {"other": np.zeros(3)})
    problems = check_dataset(sbd_dataset(tmp_path, "train"))
    assert [str(p) for p in problems] == [
        f"{tmp_path}/cls/a.mat: no GTcls.Segmentation in this .mat file"
    ]


def write_folder(root: Path, colors: bool = False) -> dict[str, np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    palette = [(0, 0, 0), (250, 10, 10), (10, 250, 10)]
    classes: dict[str, object] = {"classes": ["ground", "tree", "car"]}
    if colors:
        classes["palette"] = [list(c) for c in palette]
    (root / "classes.yaml").write_text(json.dumps(classes))  # JSON is YAML
    rng = np.random.default_rng(2)
    targets: dict[str, np.ndarray] = {}
    for i, stem in enumerate(("a", "b", "c")):
        target = rng.integers(0, 3, (20, 24 + i), dtype=np.uint8)
        target[:2] = 255
        targets[stem] = target
        suffix = ".png" if stem == "b" else ".jpg"
        Image.fromarray(rng.integers(0, 255, (20, 24 + i, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}{suffix}"
        )
        if colors:
            rgb = np.array([*palette, *[IGNORE_COLOR] * 253], dtype=np.uint8)[target]
            Image.fromarray(rgb).save(root / "masks" / f"{stem}.png")
        else:
            Image.fromarray(target, mode="L").save(root / "masks" / f"{stem}.png")
    return targets


@pytest.mark.parametrize("colors", [False, True], ids=["grey-ids", "rgb-colours"])
def test_folder_layout(tmp_path: Path, colors: bool) -> None:
    targets = write_folder(tmp_path, colors)
    assert detect_format(tmp_path) == "folder"
    everything = folder_dataset(tmp_path)
    assert [s.id for s in everything.samples] == ["a", "b", "c"]
    assert everything.classes == ["ground", "tree", "car"]
    for i, expected in enumerate(targets.values()):
        assert np.array_equal(assert_pair(everything, i, expected.shape), expected)
    (tmp_path / "val.txt").write_text("c\n")
    assert [s.id for s in open_dataset(tmp_path, "val").samples] == ["c"]
    with pytest.raises(DataError, match=r"train\.txt: no such split list"):
        folder_dataset(tmp_path, "train")


def test_folder_rgb_mask_with_a_foreign_colour_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path, colors=True)
    mask = tmp_path / "masks" / "b.png"
    with Image.open(mask) as mask_file:
        rgb = np.array(mask_file)
    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    problems = check_dataset(folder_dataset(tmp_path))
    assert [str(p) for p in problems] == [f"{mask}: colour (1, 2, 3) is no class's colour"]


def test_folder_without_classes_file_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "classes.yaml").unlink()
    with pytest.raises(DataError, match=r"no classes file \(classes\.json or classes\.yaml"):
        folder_dataset(tmp_path)


def test_classes_file_forms(tmp_path: Path) -> None:
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["bg", "fg"]))
    assert load_classes_file(listed) == (["bg", "fg"], voc_colormap(2))
    entries = tmp_path / "classes.yml"
    entries.write_text(
        "classes:\n  - {name: bg, color: [1, 2, 3]}\n  - {name: fg, color: [4, 5, 6]}\n"
    )
    assert load_classes_file(entries) == (["bg", "fg"], [(1, 2, 3), (4, 5, 6)])
    entries.write_text("classes: [bg, bg]\n")
    with pytest.raises(DataError, match="classes.yml: need at least 2 distinct"):
        load_classes_file(entries)


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


def _unreadable_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / "train_000004.png"
    path.write_bytes(b"not a png at all")
    return path, "unreadable label file"


BAD_DATA = [_missing_mask, _size_mismatch, _label_out_of_range, _unreadable_image, _unreadable_mask]


@pytest.mark.parametrize("spoil", BAD_DATA, ids=lambda f: f.__name__.strip("_"))
def test_bad_data_is_reported_with_the_file(
    voc_copy: Path, spoil: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path, message = spoil(voc_copy)  # type: ignore[operator]
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


def test_data_check_passes_a_good_set(synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(synth_root), "--split", "val"]) == 0
    assert "voc:" in capsys.readouterr().out


def test_data_check_names_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such data folder" in capsys.readouterr().err
