"""The paper's other data sets in the layouts the reference's data layers read
(pascalcontext_layers.py, siftflow_layers.py, nyud_layers.py): PASCAL-Context's 59-class task,
SIFT Flow's semantic and geometric labels, NYUDv2's 40 classes; labels mapped as they map them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision import tv_tensors

from contract.palette import IGNORE_INDEX, voc_colormap
from model.data.classes import (
    CONTEXT_CLASSES,
    NYUD_CLASSES,
    SIFTFLOW_CLASSES,
    SIFTFLOW_GEOMETRY_CLASSES,
)
from model.data.datasets import (
    DataError,
    Sample,
    SegmentationDataset,
    Transforms,
    packaged_split,
    read_mat_array,
    read_split_list,
)

# PASCAL-Context: VOC2010's photos and split lists, and the context annotations (trainval/ID.mat,
# labels.txt) where the reference keeps them (data/pascal/VOC2010, data/pascal-context) or
# where their downloads unpack.
CONTEXT_VOC_SUBDIRS = (
    "VOC2010",
    "VOCdevkit/VOC2010",
    "pascal/VOC2010",
    "VOCtrainval_03-May-2010/VOCdevkit/VOC2010",
)
CONTEXT_SUBDIRS = ("", "pascal-context", "context")
# The 59-class task's names that the full label list spells otherwise (pascalcontext_layers.py).
CONTEXT_RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
SIFTFLOW_SUBDIRS = ("", "SiftFlow", "SiftFlowDataset", "sift-flow")
SIFTFLOW_CATEGORY = "spatial_envelope_256x256_static_8outdoorcategories"
NYUD_SUBDIRS = ("", "nyud")
# The reference's split lists, shipped as model/data/splits/FORMAT-SPLIT.txt (NYUDv2's
# trainval is its train and val).
PACKAGED_SPLITS = {"siftflow": ("test", "trainval"), "nyud": ("test", "train", "trainval", "val")}
# Where each layout is recognised: these paths under one of its folders.
MARKERS = {
    "siftflow": ("Images", "SemanticLabels"),
    "nyud": ("data/images", "segmentation"),
}


def find_dir(root: Path, subdirs: Iterable[str], markers: Iterable[str]) -> Path | None:
    """The first ``root/SUB`` holding every marker path, if any."""
    wanted = tuple(markers)
    for sub in subdirs:
        candidate = root / sub if sub else root
        if all((candidate / m).exists() for m in wanted):
            return candidate
    return None


def detect_reference(root: Path) -> str | None:
    """``context``, ``siftflow`` or ``nyud`` when ``root`` holds that layout."""
    if find_dir(root, CONTEXT_SUBDIRS, ("trainval",)) and find_dir(
        root, CONTEXT_VOC_SUBDIRS, ("JPEGImages",)
    ):
        return "context"
    if find_dir(root, SIFTFLOW_SUBDIRS, MARKERS["siftflow"]):
        return "siftflow"
    if find_dir(root, NYUD_SUBDIRS, MARKERS["nyud"]):
        return "nyud"
    return None


def shift_labels(values: np.ndarray) -> np.ndarray:
    """The reference's ``label - 1`` on uint8: file class k is k - 1 and 0 (void) is 255."""
    shifted = np.asarray(values).astype(np.int64) - 1
    shifted[shifted == -1] = IGNORE_INDEX
    if shifted.size and (shifted.min() < 0 or shifted.max() > 255):
        return shifted  # out of any range: `fcn data check` names the values
    return shifted.astype(np.uint8)


def read_name_list(path: Path) -> list[str]:
    """``N: name`` lines in file order, spaces removed, as the reference reads them."""
    if not path.is_file():
        raise DataError(f"{path}: missing (PASCAL-Context's label list, from its download)")
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DataError(f"{path}: line {number} is not 'N: name'")
        names.append(line.split(":", 1)[1].replace(" ", ""))
    return names


def context_table(labels: Path, labels_59: Path | None) -> np.ndarray:
    """Full label id (line N of labels.txt is N) -> 59-class id; 0 (background) elsewhere."""
    full = read_name_list(labels)
    task = read_name_list(labels_59) if labels_59 is not None else list(CONTEXT_CLASSES[1:])
    table = np.zeros(len(full) + 1, dtype=np.uint8)
    for index, task_name in enumerate(task):
        name = CONTEXT_RENAMES.get(task_name, task_name)
        if name not in full:
            raise DataError(f"{labels}: no class {name!r}, one of the 59-class task's")
        table[full.index(name) + 1] = index + 1
    return table


class ContextDataset(SegmentationDataset):
    """PASCAL-Context: ``LabelMap`` of trainval/ID.mat reduced to the 59 classes, 0 the rest."""

    format = "context"

    def __init__(self, *args: Any, table: np.ndarray, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.table = table  # full label id -> class id (context_table)

    def read_target(self, path: Path) -> np.ndarray:
        full = read_mat_array(path, "LabelMap").astype(np.int64)
        known = (full >= 0) & (full < len(self.table))
        target = np.zeros(full.shape, dtype=np.uint8)
        target[known] = self.table[full[known]]
        return target


class SIFTFlowDataset(SegmentationDataset):
    """SIFT Flow: the semantic map ``S`` of SemanticLabels/ (33 classes) as the target, and the
    geometric map ``S`` of GeoLabels/ (sky, horizontal, vertical) as the sample's geometry."""

    format = "siftflow"
    geometry_classes: ClassVar[list[str]] = list(SIFTFLOW_GEOMETRY_CLASSES)
    # When set (training both heads), each target is the two maps stacked: Mask [2, H, W],
    # semantic then geometric, so every joint transform moves both alike.
    with_geometry: bool = False

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.with_geometry:
            return super().__getitem__(index)
        image_np, target_np = self.load(index)
        geometry_np = self.load_geometry(index)
        if geometry_np.shape != target_np.shape:
            raise DataError(
                f"{self.samples[index].geometry}: geometric labels {geometry_np.shape} do not "
                f"match the semantic ones {target_np.shape} (run `fcn data check {self.root}`)"
            )
        image = tv_tensors.Image(torch.from_numpy(np.array(image_np)).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.from_numpy(np.stack([target_np, geometry_np])))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def read_target(self, path: Path) -> np.ndarray:
        return shift_labels(read_mat_array(path, "S"))

    def read_geometry(self, path: Path) -> np.ndarray:
        """A geometric label file as class ids: its -1 and 0 (void) become 255."""
        values = read_mat_array(path, "S").astype(np.int64)
        values[values == -1] = 0
        return shift_labels(values)

    def load_geometry(self, index: int) -> np.ndarray:
        """The geometric labels of sample ``index``, [H, W] uint8, 255 = void."""
        path = self.samples[index].geometry
        if path is None or not path.is_file():
            raise DataError(f"{path}: no such file (run `fcn data check {self.root}`)")
        return self.read_geometry(path)


class NYUDDataset(SegmentationDataset):
    """NYUDv2: ``segmentation`` of segmentation/img_ID.mat, 40 classes, 0 (void) as 255."""

    format = "nyud"

    def read_target(self, path: Path) -> np.ndarray:
        return shift_labels(read_mat_array(path, "segmentation"))


def _split_ids(base: Path, fmt: str, split: str) -> list[str]:
    """``base/SPLIT.txt``, else the reference's list shipped with the package."""
    list_file = base / f"{split}.txt"
    if list_file.is_file():
        return read_split_list(list_file)
    packaged = packaged_split(f"{fmt}-{split}")
    if packaged is None and split == "trainval":
        parts = [packaged_split(f"{fmt}-{s}") for s in ("train", "val")]
        packaged = None if None in parts else [i for part in parts for i in part or []]
    if packaged is None:
        found = reference_splits(base, fmt)
        raise DataError(f"{list_file}: no such split list (found: {', '.join(found) or 'none'})")
    return packaged


def reference_splits(base: Path, fmt: str) -> list[str]:
    """The split lists of a SIFT Flow or NYUDv2 folder, else the packaged ones."""
    found = sorted(p.stem for p in base.glob("*.txt"))
    return found or list(PACKAGED_SPLITS[fmt])


def context_splits(voc: Path) -> list[str]:
    """The image-set lists of VOC2010 (ImageSets/Main), per-class lists aside."""
    return sorted(p.stem for p in (voc / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)


def context_dirs(root: Path) -> tuple[Path, Path]:
    """(VOC2010 folder, context annotations folder) under ``root``."""
    voc = find_dir(root, CONTEXT_VOC_SUBDIRS, ("JPEGImages",))
    if voc is None:
        raise DataError(f"{root}: no VOC2010/JPEGImages/ (PASCAL-Context labels VOC2010's photos)")
    context = find_dir(root, CONTEXT_SUBDIRS, ("trainval",))
    if context is None:
        raise DataError(f"{root}: no trainval/ of PASCAL-Context .mat label maps")
    return voc, context


def context_dataset(
    root: str | os.PathLike[str], split: str = "train", transforms: Transforms | None = None
) -> ContextDataset:
    """PASCAL-Context's 59-class task: VOC2010 photos, ``ImageSets/Main/SPLIT.txt``, labels
    from ``trainval/ID.mat`` through ``labels.txt`` (and ``59_labels.txt``, if present)."""
    given = Path(root)
    voc, context = context_dirs(given)
    list_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        found = ", ".join(context_splits(voc)) or "none"
        raise DataError(f"{list_file}: no such split list (found: {found})")
    labels_59 = context / "59_labels.txt"
    table = context_table(context / "labels.txt", labels_59 if labels_59.is_file() else None)
    samples = [
        Sample(i, voc / "JPEGImages" / f"{i}.jpg", context / "trainval" / f"{i}.mat")
        for i in read_split_list(list_file)
    ]
    classes = list(CONTEXT_CLASSES)
    return ContextDataset(
        given,  # the folder holding both, as `fcn data check` takes it
        split,
        samples,
        classes=classes,
        palette=voc_colormap(len(classes)),
        transforms=transforms,
        table=table,
    )


def siftflow_dataset(
    root: str | os.PathLike[str], split: str = "trainval", transforms: Transforms | None = None
) -> SIFTFlowDataset:
    """SIFT Flow: ``Images/C/ID.jpg``, ``SemanticLabels/C/ID.mat`` and ``GeoLabels/C/ID.mat``
    (C its one category folder); ``SPLIT.txt`` or the reference's trainval / test lists."""
    given = Path(root)
    base = find_dir(given, SIFTFLOW_SUBDIRS, MARKERS["siftflow"])
    if base is None:
        raise DataError(f"{given}: no Images/ and SemanticLabels/ of SIFT Flow")
    samples = [
        Sample(
            i,
            base / "Images" / SIFTFLOW_CATEGORY / f"{i}.jpg",
            base / "SemanticLabels" / SIFTFLOW_CATEGORY / f"{i}.mat",
            geometry=base / "GeoLabels" / SIFTFLOW_CATEGORY / f"{i}.mat",
        )
        for i in _split_ids(base, "siftflow", split)
    ]
    return SIFTFlowDataset(
        base,
        split,
        samples,
        classes=list(SIFTFLOW_CLASSES),
        palette=voc_colormap(len(SIFTFLOW_CLASSES)),
        transforms=transforms,
    )


def nyud_dataset(
    root: str | os.PathLike[str], split: str = "trainval", transforms: Transforms | None = None
) -> NYUDDataset:
    """NYUDv2 as the reference ships it: ``data/images/img_ID.png``, ``segmentation/img_ID.mat``;
    ``SPLIT.txt`` or the reference's train / val / trainval / test lists."""
    given = Path(root)
    base = find_dir(given, NYUD_SUBDIRS, MARKERS["nyud"])
    if base is None:
        raise DataError(f"{given}: no data/images/ and segmentation/ of NYUDv2")
    samples = [
        Sample(
            i,
            base / "data" / "images" / f"img_{i}.png",
            base / "segmentation" / f"img_{i}.mat",
        )
        for i in _split_ids(base, "nyud", split)
    ]
    return NYUDDataset(
        base,
        split,
        samples,
        classes=list(NYUD_CLASSES),
        palette=voc_colormap(len(NYUD_CLASSES)),
        transforms=transforms,
    )
