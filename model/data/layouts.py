"""The folder layouts a data set comes in (PASCAL VOC, SBD, images/ + masks/, and the
reference's PASCAL-Context, SIFT Flow and NYUDv2): telling them apart, their split lists
(packaged ones included) and opening one as a data set."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from contract.decode import EXTENSIONS
from contract.palette import VOC_CLASSES, voc_colormap
from model.data.classes import CLASSES_FILES, find_classes_file, load_classes_file
from model.data.datasets import (
    DataError,
    FolderDataset,
    Sample,
    SBDDataset,
    SegmentationDataset,
    Transforms,
    VOCDataset,
    packaged_split,
    read_split_list,
)
from model.data.reference_sets import (
    MARKERS,
    NYUD_SUBDIRS,
    SIFTFLOW_SUBDIRS,
    context_dataset,
    context_dirs,
    context_splits,
    detect_reference,
    find_dir,
    nyud_dataset,
    reference_splits,
    siftflow_dataset,
)
from model.names import DATA_FORMATS

FORMATS = DATA_FORMATS
# Where VOC's folder may sit below the root a user names (torchvision's download layouts).
VOC_SUBDIRS = ("", "VOCdevkit/VOC2012", "VOCdevkit/VOC2011", "TrainVal/VOCdevkit/VOC2011")
SBD_SUBDIRS = ("", "dataset", "benchmark_RELEASE/dataset")
VOC_MARKERS = ("JPEGImages", "SegmentationClass")
SBD_MARKERS = ("img", "cls")
# Split lists shipped with the package (model/data/splits/NAME.txt), used when a set has none.
PACKAGED_SPLITS = ("seg11valid",)


def detect_format(root: str | os.PathLike[str]) -> str:
    """``voc``, ``sbd``, ``folder``, ``context``, ``siftflow`` or ``nyud`` from the folders
    found under ``root``."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: no such data folder")
    reference = detect_reference(path)
    if reference is not None:
        return reference
    if find_dir(path, VOC_SUBDIRS, VOC_MARKERS):
        return "voc"
    if find_dir(path, SBD_SUBDIRS, SBD_MARKERS):
        return "sbd"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folder"
    raise DataError(
        f"{path}: not a known data layout: expected VOC (JPEGImages/ + SegmentationClass/), "
        "SBD (img/ + cls/), a folder of images/ + masks/, PASCAL-Context (VOC2010/ + "
        "trainval/), SIFT Flow (Images/ + SemanticLabels/) or NYUDv2 (data/images/ + "
        "segmentation/)"
    )


def voc_dataset(
    root: str | os.PathLike[str], split: str = "train", transforms: Transforms | None = None
) -> VOCDataset:
    """PASCAL VOC (or a data set in its layout, e.g. ``fcn data synth``'s).

    ``root`` is the VOC2012 folder or one above it (``VOCdevkit/VOC2012``); the split list
    is ``ImageSets/Segmentation/SPLIT.txt``, or a packaged list such as ``seg11valid``.
    Classes come from ``classes.json`` beside JPEGImages/ if present, else VOC's 21.
    """
    given = Path(root)
    base = find_dir(given, VOC_SUBDIRS, VOC_MARKERS)
    if base is None:
        raise DataError(f"{given}: no JPEGImages/ and SegmentationClass/ (nor VOCdevkit/VOC2012/)")
    list_dir = base / "ImageSets" / "Segmentation"
    list_file = list_dir / f"{split}.txt"
    if list_file.is_file():
        ids = read_split_list(list_file)
    elif split in PACKAGED_SPLITS:
        ids = packaged_split(split) or []
    else:
        found = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
        raise DataError(
            f"{list_file}: no such split list (found: {', '.join(found) or 'none'}; "
            f"packaged: {', '.join(PACKAGED_SPLITS)})"
        )
    samples = [
        Sample(i, base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png")
        for i in ids
    ]
    classes_file = find_classes_file(base)
    if classes_file is not None:
        classes, palette = load_classes_file(classes_file)
    else:
        classes, palette = list(VOC_CLASSES), voc_colormap(len(VOC_CLASSES))
    return VOCDataset(base, split, samples, classes=classes, palette=palette, transforms=transforms)


def sbd_dataset(
    root: str | os.PathLike[str], split: str = "train", transforms: Transforms | None = None
) -> SBDDataset:
    """The Semantic Boundaries Dataset: ``img/ID.jpg``, ``cls/ID.mat``, ``SPLIT.txt``."""
    given = Path(root)
    base = find_dir(given, SBD_SUBDIRS, SBD_MARKERS)
    if base is None:
        raise DataError(f"{given}: no img/ and cls/ folders (nor benchmark_RELEASE/dataset/)")
    list_file = base / f"{split}.txt"
    if not list_file.is_file():
        found = sorted(p.stem for p in base.glob("*.txt"))
        raise DataError(f"{list_file}: no such split list (found: {', '.join(found) or 'none'})")
    samples = [
        Sample(i, base / "img" / f"{i}.jpg", base / "cls" / f"{i}.mat")
        for i in read_split_list(list_file)
    ]
    classes, palette = list(VOC_CLASSES), voc_colormap(len(VOC_CLASSES))
    return SBDDataset(base, split, samples, classes=classes, palette=palette, transforms=transforms)


def folder_dataset(
    root: str | os.PathLike[str], split: str = "all", transforms: Transforms | None = None
) -> FolderDataset:
    """``images/STEM.*`` with ``masks/STEM.png`` and a classes file (``classes.json`` or
    ``.yaml``). ``split`` names a list of stems (``SPLIT.txt`` or ``splits/SPLIT.txt``);
    ``all`` takes every image when there is no such list."""
    base = Path(root)
    images_dir, masks_dir = base / "images", base / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{base}: a folder data set needs images/ and masks/")
    classes_file = find_classes_file(base)
    if classes_file is None:
        raise DataError(f"{base}: no classes file ({' or '.join(CLASSES_FILES)})")
    classes, palette = load_classes_file(classes_file)
    by_stem: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in EXTENSIONS:
            continue
        if path.stem in by_stem:
            raise DataError(f"{path}: same stem as {by_stem[path.stem].name}; stems must be unique")
        by_stem[path.stem] = path
    list_file = next(
        (p for p in (base / f"{split}.txt", base / "splits" / f"{split}.txt") if p.is_file()), None
    )
    if list_file is not None:
        stems = read_split_list(list_file)
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise DataError(f"{list_file}: no image in {images_dir} for {', '.join(unknown[:3])}")
    elif split == "all":
        stems = list(by_stem)
    else:
        raise DataError(f"{base / f'{split}.txt'}: no such split list (or use split 'all')")
    if not stems:
        raise DataError(f"{images_dir}: no images ({', '.join(EXTENSIONS)})")
    samples = [Sample(s, by_stem[s], masks_dir / f"{s}.png") for s in stems]
    return FolderDataset(
        base, split, samples, classes=classes, palette=palette, transforms=transforms
    )


BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": voc_dataset,
    "sbd": sbd_dataset,
    "folder": folder_dataset,
    "context": context_dataset,
    "siftflow": siftflow_dataset,
    "nyud": nyud_dataset,
}


def open_dataset(
    root: str | os.PathLike[str],
    split: str,
    data_format: str = "auto",
    transforms: Transforms | None = None,
) -> SegmentationDataset:
    """The data set under ``root`` in the given (or detected) format."""
    if data_format not in FORMATS:
        raise DataError(f"unknown data format {data_format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if data_format == "auto" else data_format
    return BUILDERS[fmt](root, split, transforms)


def available_splits(root: str | os.PathLike[str], data_format: str = "auto") -> list[str]:
    """The split lists a data set ships (``all`` for a folder without lists)."""
    fmt = detect_format(root) if data_format == "auto" else data_format
    base = Path(root)
    if fmt == "voc":
        voc = find_dir(base, VOC_SUBDIRS, VOC_MARKERS) or base
        return sorted(p.stem for p in (voc / "ImageSets" / "Segmentation").glob("*.txt"))
    if fmt == "sbd":
        sbd = find_dir(base, SBD_SUBDIRS, SBD_MARKERS) or base
        return sorted(p.stem for p in sbd.glob("*.txt"))
    if fmt == "context":
        return context_splits(context_dirs(base)[0])
    if fmt in ("siftflow", "nyud"):
        subdirs = SIFTFLOW_SUBDIRS if fmt == "siftflow" else NYUD_SUBDIRS
        found = find_dir(base, subdirs, MARKERS[fmt]) or base
        return reference_splits(found, fmt)
    lists = sorted({p.stem for d in (base, base / "splits") for p in d.glob("*.txt")})
    return lists or ["all"]
