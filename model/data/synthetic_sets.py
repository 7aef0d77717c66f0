"""The synthetic data set written in the reference's other layouts: PASCAL-Context, SIFT Flow
and NYUDv2, each with its file names, .mat keys and label encoding, so that reading them is
tested offline. The shapes are model.data.synthetic's, given that data set's class ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from scipy.io import savemat

from model.data.classes import CONTEXT_CLASSES, NYUD_CLASSES, SIFTFLOW_CLASSES
from model.data.reference_sets import CONTEXT_RENAMES, SIFTFLOW_CATEGORY
from model.data.synthetic import JPEG_QUALITY, render_sample, sample_rng

Progress = Callable[[int], None] | None
# Per layout: the class each synthetic class (SYNTH_CLASSES, background first) becomes.
CONTEXT_AS = ("background", "plate", "sign", "mountain", "light", "track")
SIFTFLOW_AS = ("sky", "sun", "window", "mountain", "moon", "pole")
# SIFT Flow's geometric classes in its files: 1 sky, 2 horizontal, 3 vertical.
SIFTFLOW_GEOMETRY_AS = (1, 1, 3, 3, 2, 3)
NYUD_AS = ("wall", "picture", "box", "lamp", "mirror", "towel")
# Names of the full PASCAL-Context list that are in no class of the 59 (spaces as in its file).
CONTEXT_OTHERS = ("accordion", "air conditioner", "antenna", "ashtray", "bridge", "cat tail")


class Writer(Protocol):
    def __call__(
        self,
        root: Path,
        train: int,
        val: int,
        size: tuple[int, int],
        *,
        seed: int,
        band: int,
        progress: Progress,
    ) -> None: ...


def _samples(
    counts: tuple[int, int], size: tuple[int, int], seed: int, band: int, progress: Progress
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(split, index, image, synthetic target) of every image, train first."""
    out = []
    for split, count in zip(("train", "val"), counts, strict=True):
        for i in range(count):
            image, target = render_sample(sample_rng(seed, split, i), size, band)
            out.append((split, i, image, target))
            if progress is not None:
                progress(1)
    return out


def _lookup(ids: tuple[int, ...], void: int) -> np.ndarray:
    """Synthetic class id (and 255) -> a file's label value, int64 [256]."""
    table = np.full(256, void, dtype=np.int64)
    table[: len(ids)] = ids
    return table


def _write_lists(folder: Path, lists: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def write_context(
    root: Path,
    train: int,
    val: int,
    size: tuple[int, int],
    *,
    seed: int,
    band: int,
    progress: Progress,
) -> None:
    """The reference's data/ folder: pascal/VOC2010/{JPEGImages, ImageSets/Main} and
    pascal-context/{trainval/ID.mat (``LabelMap``, full label ids), labels.txt, 59_labels.txt}."""
    voc, context = root / "pascal" / "VOC2010", root / "pascal-context"
    for sub in (voc / "JPEGImages", context / "trainval"):
        sub.mkdir(parents=True)
    # A full list in alphabetical order, as PASCAL-Context's is, so that full ids differ
    # from the 59-class ids and some names carry spaces the reference strips.
    task = [CONTEXT_RENAMES.get(n, n) for n in CONTEXT_CLASSES[1:]]
    full = sorted([*task, *CONTEXT_OTHERS], key=lambda n: n.replace(" ", ""))
    full[full.index("tvmonitor")] = "tv monitor"
    (context / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(full, 1)))
    (context / "59_labels.txt").write_text(
        "".join(f"{i}: {n}\n" for i, n in enumerate(CONTEXT_CLASSES[1:], 1))
    )
    stripped = [n.replace(" ", "") for n in full]

    def full_id(name: str) -> int:
        return stripped.index(CONTEXT_RENAMES.get(name, name)) + 1

    # Background is drawn as a name outside the task (it becomes 0); PASCAL-Context has no
    # void, so boundaries are 0, unlabelled, as well.
    ids = (full_id("airconditioner"), *(full_id(n) for n in CONTEXT_AS[1:]))
    table = _lookup(ids, 0)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split, i, image, target in _samples((train, val), size, seed, band, progress):
        sample_id = f"{split}_{i:06d}"
        lists[split].append(sample_id)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=JPEG_QUALITY)
        label_map = table[target].astype(np.uint16)
        savemat(context / "trainval" / f"{sample_id}.mat", {"LabelMap": label_map})
    lists["trainval"] = lists["train"] + lists["val"]
    _write_lists(voc / "ImageSets" / "Main", lists)


def write_siftflow(
    root: Path,
    train: int,
    val: int,
    size: tuple[int, int],
    *,
    seed: int,
    band: int,
    progress: Progress,
) -> None:
    """Images/C/ID.jpg, SemanticLabels/C/ID.mat and GeoLabels/C/ID.mat (``S``: classes from 1,
    void 0 and -1) and trainval.txt / test.txt, C SIFT Flow's category folder."""
    folders = [root / top / SIFTFLOW_CATEGORY for top in ("Images", "SemanticLabels", "GeoLabels")]
    for folder in folders:
        folder.mkdir(parents=True)
    images, semantic, geometric = folders
    semantic_table = _lookup(tuple(SIFTFLOW_CLASSES.index(n) + 1 for n in SIFTFLOW_AS), 0)
    geometry_table = _lookup(SIFTFLOW_GEOMETRY_AS, -1)
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    for split, i, image, target in _samples((train, val), size, seed, band, progress):
        sample_id = f"synth_{split}{i:06d}"
        lists["trainval" if split == "train" else "test"].append(sample_id)
        Image.fromarray(image).save(images / f"{sample_id}.jpg", quality=JPEG_QUALITY)
        savemat(semantic / f"{sample_id}.mat", {"S": semantic_table[target].astype(np.int16)})
        savemat(geometric / f"{sample_id}.mat", {"S": geometry_table[target].astype(np.int16)})
    _write_lists(root, lists)


def write_nyud(
    root: Path,
    train: int,
    val: int,
    size: tuple[int, int],
    *,
    seed: int,
    band: int,
    progress: Progress,
) -> None:
    """data/images/img_ID.png, segmentation/img_ID.mat (``segmentation``: classes from 1, void 0),
    trainval.txt and test.txt; IDs are numbers, as NYUDv2's are."""
    images, labels = root / "data" / "images", root / "segmentation"
    images.mkdir(parents=True)
    labels.mkdir()
    table = _lookup(tuple(NYUD_CLASSES.index(n) + 1 for n in NYUD_AS), 0)
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    for split, i, image, target in _samples((train, val), size, seed, band, progress):
        sample_id = str(1 + i if split == "train" else 1 + train + i)
        lists["trainval" if split == "train" else "test"].append(sample_id)
        Image.fromarray(image).save(images / f"img_{sample_id}.png")
        savemat(labels / f"img_{sample_id}.mat", {"segmentation": table[target].astype(np.uint8)})
    _write_lists(root, lists)


WRITERS: dict[str, Writer] = {
    "context": write_context,
    "siftflow": write_siftflow,
    "nyud": write_nyud,
}
