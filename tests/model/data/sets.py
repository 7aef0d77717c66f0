"""Small data sets the tests write (SBD's .mat files, a folder of images/ + masks/), and
what every pair a data set yields must be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import savemat
from scipy.sparse import csc_matrix
from torchvision import tv_tensors

from contract.palette import IGNORE_COLOR
from model.data.datasets import SegmentationDataset

SIZE = (40, 48)  # H, W of the synthetic set the tests share
FOLDER_CLASSES = ["ground", "tree", "car"]
FOLDER_PALETTE = [(0, 0, 0), (250, 10, 10), (10, 250, 10)]


def assert_pair(dataset: SegmentationDataset, index: int, size: tuple[int, int]) -> np.ndarray:
    """Check the pair at ``index`` is a uint8 RGB image and a label map of ``size``."""
    image, target = dataset[index]
    assert isinstance(image, tv_tensors.Image)
    assert isinstance(target, tv_tensors.Mask)
    assert image.dtype == torch.uint8
    assert image.shape == (3, *size)
    assert target.shape == size
    values = set(target.unique().tolist())
    assert values <= {*range(dataset.num_classes), 255}
    return target.numpy()


def write_sbd(root: Path, targets: dict[str, np.ndarray]) -> None:
    """SBD's layout: img/ID.jpg, cls/ID.mat; all but the last ID in train.txt, it in val.txt."""
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


def write_folder(root: Path, colors: bool = False) -> dict[str, np.ndarray]:
    """images/{a.jpg, b.png, c.jpg}, their masks (class ids, or RGB in the classes' colours
    when ``colors``) and classes.yaml; returns the label maps by stem."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    classes: dict[str, object] = {"classes": FOLDER_CLASSES}
    if colors:
        classes["palette"] = [list(c) for c in FOLDER_PALETTE]
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
        write_mask(root / "masks" / f"{stem}.png", target, colors)
    return targets


def write_mask(path: Path, target: np.ndarray, colors: bool = False) -> None:
    """A folder data set's mask: class ids as grayscale, or RGB in FOLDER_PALETTE."""
    if colors:
        rgb = np.array([*FOLDER_PALETTE, *[IGNORE_COLOR] * 253], dtype=np.uint8)[target]
        Image.fromarray(rgb).save(path)
    else:
        Image.fromarray(target, mode="L").save(path)
