"""Segmentation data sets (PASCAL VOC, SBD, a plain folder layout) and their integrity check.

Every data set yields ``(image, target)``: unnormalised RGB ``tv_tensors.Image`` uint8
[3, H, W] and ``tv_tensors.Mask`` [H, W] (uint8, int64 past 255 classes), 255 = ignore.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contract.palette import IGNORE_COLOR, IGNORE_INDEX, VOC_CLASSES, Color, voc_colormap
from model.errors import FCNError
from model.files import read_json_or_yaml

FORMATS = ("auto", "voc", "sbd", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# A classes file: {"classes": [names], "palette": [[r, g, b], ...]} (palette optional).
CLASSES_FILES = ("classes.json", "classes.yaml", "classes.yml")
# Where VOC's folder may sit below the root a user names (torchvision's download layouts).
VOC_SUBDIRS = ("", "VOCdevkit/VOC2012", "VOCdevkit/VOC2011", "TrainVal/VOCdevkit/VOC2011")
SBD_SUBDIRS = ("", "dataset", "benchmark_RELEASE/dataset")
# Split lists shipped with the package (model/data/splits/NAME.txt), used when a set has none.
PACKAGED_SPLITS = ("seg11valid",)

Transforms = Callable[[Any, Any], tuple[Any, Any]]


class DataError(FCNError, ValueError):
    """A data set that cannot be used as it is; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    target: Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a data set."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (grayscale, palette and alpha converted)."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def read_label_png(path: Path, palette: Sequence[Color] | None = None) -> np.ndarray:
    """A label PNG as class ids [H, W]: palette or grayscale PNGs hold the ids themselves;
    RGB ones are mapped through ``palette`` (VOC's light ignore colour -> 255)."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.array(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.array(img).astype(np.int64)
        if img.mode in ("RGB", "RGBA") and palette is not None:
            return _colors_to_ids(np.asarray(img.convert("RGB")), palette, path)
    hint = "" if palette is None else " or an RGB PNG in the classes' colours"
    raise DataError(
        f"{path}: label PNG of mode {img.mode}, expected a palette or grayscale PNG{hint}"
    )


def _colors_to_ids(rgb: np.ndarray, palette: Sequence[Color], path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    r, g, b = IGNORE_COLOR
    lookup.setdefault((r << 16) | (g << 8) | b, IGNORE_INDEX)
    colors, inverse = np.unique(code, return_inverse=True)
    ids = np.empty(len(colors), dtype=np.int64)
    for k, c in enumerate(colors.tolist()):
        if c not in lookup:
            raise DataError(
                f"{path}: colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) is no class's colour"
            )
        ids[k] = lookup[c]
    dtype = np.uint8 if len(palette) <= 256 else np.int64
    return ids[inverse].reshape(code.shape).astype(dtype)


def read_sbd_mat(path: Path) -> np.ndarray:
    """SBD's ``GTcls.Segmentation`` from a ``cls/*.mat`` file: class ids [H, W]."""
    from scipy.io import loadmat

    mat = loadmat(path, squeeze_me=True, struct_as_record=False, variable_names=["GTcls"])
    if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
        raise DataError(f"{path}: no GTcls.Segmentation in this .mat file")
    return np.asarray(mat["GTcls"].Segmentation)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A list of (image file, label file) pairs with class names and colours.

    ``transforms`` takes and returns ``(image, target)`` as tv_tensors (see model.data.transforms).
    """

    format: str = ""

    def __init__(
        self,
        root: Path,
        split: str,
        samples: list[Sample],
        *,
        classes: list[str],
        palette: list[Color],
        transforms: Transforms | None = None,
    ):
        if len(classes) < 2:
            raise DataError(f"{root}: a segmentation data set needs at least 2 classes")
        self.root = root
        self.split = split
        self.samples = samples
        self.classes = classes
        self.palette = palette
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        """Short provenance, recorded in checkpoints: ``voc:/data/VOC2012 (train, 1464 images)``."""
        return f"{self.format}:{self.root} ({self.split}, {len(self)} images)"

    def __len__(self) -> int:
        return len(self.samples)

    def read_target(self, path: Path) -> np.ndarray:
        return read_label_png(path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: RGB uint8 [H, W, 3] and class ids [H, W]."""
        sample = self.samples[index]
        for path in (sample.image, sample.target):
            if not path.is_file():
                raise DataError(f"{path}: no such file (run `fcn data check {self.root}`)")
        try:
            image = read_image(sample.image)
        except OSError as exc:
            raise DataError(f"{sample.image}: unreadable image ({exc})") from exc
        try:
            target = self.read_target(sample.target)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{sample.target}: unreadable label file ({exc})") from exc
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, target_np = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(image_np).permute(2, 0, 1))
        dtype = np.uint8 if target_np.dtype == np.uint8 else np.int64
        target = tv_tensors.Mask(torch.from_numpy(np.array(target_np, dtype=dtype)))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class VOCDataset(SegmentationDataset):
    format = "voc"


class SBDDataset(SegmentationDataset):
    format = "sbd"

    def read_target(self, path: Path) -> np.ndarray:
        return read_sbd_mat(path)


class FolderDataset(SegmentationDataset):
    format = "folder"

    def read_target(self, path: Path) -> np.ndarray:
        return read_label_png(path, self.palette)


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable split list ({exc})") from exc
    if not lines:
        raise DataError(f"{path}: empty split list")
    return lines


def packaged_split(name: str) -> list[str]:
    """A split list shipped with the package, e.g. ``seg11valid`` (736 VOC2011 val IDs)."""
    return resources.files("model.data").joinpath("splits", f"{name}.txt").read_text().split()


def load_classes_file(path: Path) -> tuple[list[str], list[Color]]:
    """Class names and colours from JSON or YAML: a list of names, or a mapping with
    ``classes`` (names, or {name, color} entries) and an optional ``palette``."""
    try:
        data = read_json_or_yaml(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable classes file ({exc})") from exc
    if isinstance(data, list):
        data = {"classes": data}
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DataError(f"{path}: expected a list of class names or a mapping with 'classes'")
    names: list[str] = []
    colors: list[Any] = []
    for entry in data["classes"]:
        if isinstance(entry, dict):
            names.append(str(entry.get("name", "")))
            if "color" in entry:
                colors.append(entry["color"])
        else:
            names.append(str(entry))
    if "palette" in data:
        colors = list(data["palette"])
    if len(names) < 2 or len(set(names)) != len(names) or "" in names:
        raise DataError(f"{path}: need at least 2 distinct, non-empty class names, got {names}")
    palette = voc_colormap(len(names))
    if colors:
        if len(colors) != len(names):
            raise DataError(f"{path}: {len(colors)} colours for {len(names)} classes")
        try:
            palette = [_color(c) for c in colors]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: bad colour ({exc})") from exc
    return names, palette


def _color(value: Any) -> Color:
    r, g, b = (int(v) for v in value)
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"{value} is not RGB in 0..255")
    return r, g, b


def _find_classes_file(root: Path) -> Path | None:
    return next((root / n for n in CLASSES_FILES if (root / n).is_file()), None)


def _resolve(root: Path, subdirs: Iterable[str], marker: tuple[str, ...]) -> Path | None:
    for sub in subdirs:
        candidate = root / sub if sub else root
        if all((candidate / m).exists() for m in marker):
            return candidate
    return None


def detect_format(root: str | os.PathLike[str]) -> str:
    """``voc``, ``sbd`` or ``folder`` from the folders found under ``root``."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: no such data folder")
    if _resolve(path, VOC_SUBDIRS, ("JPEGImages", "SegmentationClass")):
        return "voc"
    if _resolve(path, SBD_SUBDIRS, ("img", "cls")):
        return "sbd"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folder"
    raise DataError(
        f"{path}: not a known data layout: expected VOC (JPEGImages/ + SegmentationClass/), "
        "SBD (img/ + cls/) or a folder of images/ + masks/"
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
    base = _resolve(given, VOC_SUBDIRS, ("JPEGImages", "SegmentationClass"))
    if base is None:
        raise DataError(f"{given}: no JPEGImages/ and SegmentationClass/ (nor VOCdevkit/VOC2012/)")
    list_dir = base / "ImageSets" / "Segmentation"
    list_file = list_dir / f"{split}.txt"
    if list_file.is_file():
        ids = _read_list(list_file)
    elif split in PACKAGED_SPLITS:
        ids = packaged_split(split)
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
    classes_file = _find_classes_file(base)
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
    base = _resolve(given, SBD_SUBDIRS, ("img", "cls"))
    if base is None:
        raise DataError(f"{given}: no img/ and cls/ folders (nor benchmark_RELEASE/dataset/)")
    list_file = base / f"{split}.txt"
    if not list_file.is_file():
        found = sorted(p.stem for p in base.glob("*.txt"))
        raise DataError(f"{list_file}: no such split list (found: {', '.join(found) or 'none'})")
    samples = [
        Sample(i, base / "img" / f"{i}.jpg", base / "cls" / f"{i}.mat")
        for i in _read_list(list_file)
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
    classes_file = _find_classes_file(base)
    if classes_file is None:
        raise DataError(f"{base}: no classes file ({' or '.join(CLASSES_FILES)})")
    classes, palette = load_classes_file(classes_file)
    by_stem: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in by_stem:
            raise DataError(f"{path}: same stem as {by_stem[path.stem].name}; stems must be unique")
        by_stem[path.stem] = path
    list_file = next(
        (p for p in (base / f"{split}.txt", base / "splits" / f"{split}.txt") if p.is_file()), None
    )
    if list_file is not None:
        stems = _read_list(list_file)
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise DataError(f"{list_file}: no image in {images_dir} for {', '.join(unknown[:3])}")
    elif split == "all":
        stems = list(by_stem)
    else:
        raise DataError(f"{base / f'{split}.txt'}: no such split list (or use split 'all')")
    if not stems:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    samples = [Sample(s, by_stem[s], masks_dir / f"{s}.png") for s in stems]
    return FolderDataset(
        base, split, samples, classes=classes, palette=palette, transforms=transforms
    )


BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": voc_dataset,
    "sbd": sbd_dataset,
    "folder": folder_dataset,
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
        voc = _resolve(base, VOC_SUBDIRS, ("JPEGImages", "SegmentationClass")) or base
        return sorted(p.stem for p in (voc / "ImageSets" / "Segmentation").glob("*.txt"))
    if fmt == "sbd":
        sbd = _resolve(base, SBD_SUBDIRS, ("img", "cls")) or base
        return sorted(p.stem for p in sbd.glob("*.txt"))
    lists = sorted({p.stem for d in (base, base / "splits") for p in d.glob("*.txt")})
    return lists or ["all"]


def check_sample(dataset: SegmentationDataset, sample: Sample) -> list[Problem]:
    """Everything wrong with one pair: missing or unreadable files, sizes, label values."""
    problems: list[Problem] = []
    image_size: tuple[int, int] | None = None
    if not sample.image.is_file():
        problems.append(Problem(sample.image, "missing image"))
    else:
        try:
            with Image.open(sample.image) as img:
                img.load()  # a full decode: truncated files fail here, not mid-training
                image_size = img.height, img.width
        except Exception as exc:
            problems.append(Problem(sample.image, f"unreadable image ({exc})"))
    if not sample.target.is_file():
        problems.append(Problem(sample.target, f"missing label file for {sample.image.name}"))
        return problems
    try:
        target = dataset.read_target(sample.target)
    except DataError as exc:
        message = str(exc).removeprefix(f"{sample.target}: ")
        return [*problems, Problem(sample.target, message)]
    except Exception as exc:
        return [*problems, Problem(sample.target, f"unreadable label file ({exc})")]
    if target.ndim != 2:
        problems.append(Problem(sample.target, f"label map of shape {target.shape}, not H x W"))
        return problems
    if image_size is not None and target.shape != image_size:
        (h, w), (ih, iw) = target.shape, image_size
        problems.append(
            Problem(sample.target, f"label is {w}x{h} but image {sample.image.name} is {iw}x{ih}")
        )
    values = np.unique(target)
    bad = values[((values < 0) | (values >= dataset.num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        problems.append(
            Problem(
                sample.target,
                f"label values {bad[:5].tolist()} outside [0, {dataset.num_classes}) and not "
                f"{IGNORE_INDEX}",
            )
        )
    return problems


def check_dataset(
    dataset: SegmentationDataset,
    indices: Sequence[int] | None = None,
    workers: int = 4,
    progress: bool = False,
) -> list[Problem]:
    """Check every sample (or those at ``indices``) in parallel threads; problems by file."""
    from tqdm import tqdm

    chosen = range(len(dataset)) if indices is None else indices
    samples = [dataset.samples[i] for i in chosen]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda s: check_sample(dataset, s), samples)
        found = tqdm(
            results,
            total=len(samples),
            desc=f"checking {dataset.split}",
            unit="img",
            disable=None if progress else True,
            leave=False,
        )
        return [p for problems in found for p in problems]


def format_problems(problems: Sequence[Problem | str], limit: int = 20) -> str:
    """Up to ``limit`` problems, one per line, and how many more there are."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more problems")
    return "\n".join(lines)


def download_voc(root: str | os.PathLike[str]) -> Path:
    """Download and extract VOC2012 trainval under ``root`` (torchvision's downloader)."""
    from torchvision.datasets import VOCSegmentation

    VOCSegmentation(str(root), year="2012", image_set="train", download=True)
    return Path(root) / "VOCdevkit" / "VOC2012"


def download_sbd(root: str | os.PathLike[str]) -> Path:
    """Download and extract SBD into ``root`` (torchvision's downloader)."""
    from torchvision.datasets import SBDataset

    SBDataset(str(root), image_set="train", mode="segmentation", download=True)
    return Path(root)
