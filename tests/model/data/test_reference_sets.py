"""PASCAL-Context, SIFT Flow and NYUDv2 in the reference's layouts: detected, read with the
reference data layers' label mapping, checked file by file, and written by ``fcn data synth``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from model.cli import main
from model.data.classes import CONTEXT_CLASSES, NYUD_CLASSES, SIFTFLOW_CLASSES
from model.data.datasets import DataError
from model.data.layouts import available_splits, detect_format, open_dataset
from model.data.reference_sets import (
    CONTEXT_RENAMES,
    SIFTFLOW_CATEGORY,
    ContextDataset,
    SIFTFlowDataset,
)
from model.data.synthetic import write_synthetic
from tests.model.data.sets import assert_pair

SIZE = (20, 24)
LAYOUTS = {
    # layout: (training split, evaluation split, classes)
    "context": ("train", "val", CONTEXT_CLASSES),
    "siftflow": ("trainval", "test", SIFTFLOW_CLASSES),
    "nyud": ("trainval", "test", NYUD_CLASSES),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reference")
    return {layout: write_synthetic(base / layout, 3, 2, SIZE, layout=layout) for layout in LAYOUTS}


@pytest.fixture
def copy(roots: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return Path(shutil.copytree(roots[request.param], tmp_path / request.param))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_synthetic_layout_is_detected_read_and_clean(
    roots: dict[str, Path], layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = roots[layout]
    train, test, classes = LAYOUTS[layout]
    assert detect_format(root) == layout
    assert {train, test} <= set(available_splits(root))
    for split, count in ((train, 3), (test, 2)):
        dataset = open_dataset(root, split)
        assert (dataset.format, len(dataset), dataset.classes) == (layout, count, list(classes))
        target = assert_pair(dataset, 0, SIZE)
        assert len(np.unique(target[target != 255])) >= 2  # the shapes kept their classes
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{len(classes)} classes" in out
    assert "no problems found" in out


def test_context_labels_reduce_to_the_59_classes(roots: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(roots["context"], tmp_path / "context"))
    context = root / "pascal-context"
    # A full list in another order than the task's, with spaces the reference strips.
    task = [CONTEXT_RENAMES.get(n, n) for n in reversed(CONTEXT_CLASSES[1:])]
    full = ["accordion", "wine glass", *task]
    full[full.index("tvmonitor")] = "tv monitor"
    (context / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(full, 1)))
    label_map = np.zeros(SIZE, dtype=np.uint16)
    label_map[0, :6] = [
        1,  # accordion: in no class -> background
        2,  # wine glass (spaces stripped): in no class -> background
        full.index("table") + 1,  # the task's diningtable
        full.index("tv monitor") + 1,  # tvmonitor
        full.index("bedclothes") + 1,  # the task's bedcloth
        len(full) + 7,  # past the list -> background
    ]
    savemat(context / "trainval" / "train_000000.mat", {"LabelMap": label_map})
    dataset = open_dataset(root, "train")
    assert isinstance(dataset, ContextDataset)
    _, target = dataset.load(0)
    names = [CONTEXT_CLASSES[i] for i in target[0, :6]]
    background = "background"
    assert names == [background, background, "diningtable", "tvmonitor", "bedcloth", background]
    assert not target[1:].any()


def test_siftflow_and_nyud_labels_shift_down_with_void_255(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    sift = Path(shutil.copytree(roots["siftflow"], tmp_path / "siftflow"))
    semantic = np.ones(SIZE, dtype=np.float64)  # MATLAB's doubles
    semantic[0, :3] = [0, 33, 28]
    geometric = np.ones(SIZE, dtype=np.int16)
    geometric[0, :4] = [-1, 0, 2, 3]
    sample = "synth_train000000"
    savemat(sift / "SemanticLabels" / SIFTFLOW_CATEGORY / f"{sample}.mat", {"S": semantic})
    savemat(sift / "GeoLabels" / SIFTFLOW_CATEGORY / f"{sample}.mat", {"S": geometric})
    dataset = open_dataset(sift, "trainval")
    assert isinstance(dataset, SIFTFlowDataset)
    _, target = dataset.load(0)
    assert target[0, :3].tolist() == [255, 32, 27]  # void, window, sky
    assert target.dtype == np.uint8
    geometry = dataset.load_geometry(0)
    assert geometry[0, :4].tolist() == [255, 255, 1, 2]  # void, void, horizontal, vertical
    assert geometry.shape == SIZE

    nyud = Path(shutil.copytree(roots["nyud"], tmp_path / "nyud"))
    segmentation = np.ones(SIZE, dtype=np.uint8)
    segmentation[0, :3] = [0, 40, 20]
    savemat(nyud / "segmentation" / "img_1.mat", {"segmentation": segmentation})
    _, target = open_dataset(nyud, "trainval").load(0)
    assert [NYUD_CLASSES[v] if v != 255 else "void" for v in target[0, :3]] == [
        "void",
        "otherprop",
        "floor mat",
    ]


def _spoil(root: Path, layout: str) -> list[tuple[Path, str]]:
    """Break a copy of a synthetic set; the problems the check must report, by file."""
    if layout == "context":
        path = root / "pascal-context" / "trainval" / "val_000001.mat"
        savemat(path, {"Labels": np.zeros(SIZE, np.uint16)})
        return [(path, "no 'LabelMap' in this .mat file")]
    if layout == "siftflow":
        geo = root / "GeoLabels" / SIFTFLOW_CATEGORY / "synth_val000000.mat"
        geo.unlink()
        semantic = root / "SemanticLabels" / SIFTFLOW_CATEGORY / "synth_train000001.mat"
        savemat(semantic, {"S": np.full((10, 24), 3, np.int16)})
        wrong = root / "GeoLabels" / SIFTFLOW_CATEGORY / "synth_train000002.mat"
        savemat(wrong, {"S": np.full(SIZE, 4, np.int16)})
        return [
            (geo, "missing geometric label file for synth_val000000.jpg"),
            (semantic, "label is 24x10 but image synth_train000001.jpg is 24x20"),
            (wrong, "geometric label values [3] outside [0, 3) and not 255"),
        ]
    path = root / "segmentation" / "img_2.mat"
    savemat(path, {"segmentation": np.full(SIZE, 41, np.uint8)})
    image = root / "data" / "images" / "img_5.png"
    image.unlink()
    return [
        (path, "label values [40] outside [0, 40) and not 255"),
        (image, "missing image"),
    ]


@pytest.mark.parametrize("copy", list(LAYOUTS), indirect=True)
def test_check_names_every_bad_file(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _spoil(copy, copy.name)
    assert main(["data", "check", str(copy)]) == 1
    out = capsys.readouterr().out
    for path, message in expected:
        assert f"{path}: {message}" in out
    assert f"{len(expected)} problem(s) found" in out


def test_context_without_its_label_list_is_refused_by_name(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(roots["context"], tmp_path / "context"))
    labels = root / "pascal-context" / "labels.txt"
    labels.unlink()
    assert main(["data", "check", str(root)]) == 2
    assert f"{labels}: missing (PASCAL-Context's label list" in capsys.readouterr().err
    labels.write_text("1: accordion\n")
    with pytest.raises(DataError, match=r"labels.txt: no class 'aeroplane'"):
        open_dataset(root, "train")


def test_reference_split_lists_are_packaged(roots: dict[str, Path], tmp_path: Path) -> None:
    sift = Path(shutil.copytree(roots["siftflow"], tmp_path / "siftflow"))
    nyud = Path(shutil.copytree(roots["nyud"], tmp_path / "nyud"))
    for listed in (*sift.glob("*.txt"), *nyud.glob("*.txt")):
        listed.unlink()
    # The reference's lists: 2,688 SIFT Flow images less 200 test and 2 unannotated; NYUDv2's
    # 795 training (train + val) and 654 test images.
    assert available_splits(sift) == ["test", "trainval"]
    assert (len(open_dataset(sift, "trainval")), len(open_dataset(sift, "test"))) == (2486, 200)
    assert open_dataset(sift, "test").samples[0].id == "coast_natu975"
    assert available_splits(nyud) == ["test", "train", "trainval", "val"]
    trainval = open_dataset(nyud, "trainval")
    assert len(trainval) == 795
    assert trainval.samples[0].image == nyud / "data" / "images" / "img_5449.png"
    assert len(open_dataset(nyud, "test")) == 654
    with pytest.raises(DataError, match=r"nyud/extra.txt: no such split list \(found: test, "):
        open_dataset(nyud, "extra")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_synth_command_writes_each_layout(
    tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / layout
    argv = ["data", "synth", "--layout", layout, "--out", str(out), "--train", "1", "--val", "1"]
    assert main([*argv, "--size", "12x16"]) == 0
    train, test, _ = LAYOUTS[layout]
    assert f"wrote 1 {train} + 1 {test} images (12x16)" in capsys.readouterr().out
    assert detect_format(out) == layout
    assert not list(tmp_path.glob(".*.tmp"))
