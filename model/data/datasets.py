"""Segmentation data sets as lists of (photo, label file) pairs, and reading one pair.

Every data set yields ``(image, target)``: unnormalised RGB ``tv_tensors.Image`` uint8
[3, H, W] and ``tv_tensors.Mask`` [H, W] (uint8, int64 past 255 classes), 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contract.decode import ImageError, decode_image
from contract.palette import IGNORE_COLOR, IGNORE_INDEX, Color
from model.errors import FCNError

Transforms = Callable[[Any, Any], tuple[Any, Any]]


class DataError(FCNError, ValueError):
    """A data set that cannot be used as it is; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    target: Path
    # A second label map of the same pixels (SIFT Flow's geometric classes), if the set has one.
    geometry: Path | None = None


def read_split_list(path: Path) -> list[str]:
    """The IDs of a split list file, one a line; an empty or unreadable list is an error."""
    try:
        lines = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable split list ({exc})") from exc
    if not lines:
        raise DataError(f"{path}: empty split list")
    return lines


def packaged_split(name: str) -> list[str] | None:
    """A split list shipped with the package (model/data/splits/NAME.txt), if there is one."""
    from importlib import resources

    entry = resources.files("model.data").joinpath("splits", f"{name}.txt")
    return entry.read_text().split() if entry.is_file() else None


def read_image(path: Path) -> np.ndarray:
    """A photo as RGB uint8 [H, W, 3], decoded as ``fcn predict`` and the service decode it
    (contract.decode: EXIF orientation, 16-bit high byte, alpha over white, ...)."""
    try:
        # The file's bytes, not its path: decode_image(path) leaves its file open to the
        # garbage collector (a ResourceWarning). Bytes and paths decode alike.
        return decode_image(path.read_bytes())
    except (ImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def read_label_png(path: Path, palette: Sequence[Color] | None = None) -> np.ndarray:
    """A label PNG as class ids [H, W]: palette or grayscale PNGs hold the ids themselves;
    RGB ones are mapped through ``palette`` (VOC's light ignore colour -> 255)."""
    # Not contract.decode: these pixels are class ids, never to be oriented or blended.
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


def read_mat_array(path: Path, key: str) -> np.ndarray:
    """The 2-D array ``key`` of a MATLAB (v5) file, as stored."""
    from scipy.io import loadmat

    mat = loadmat(path, variable_names=[key])
    if key not in mat:
        raise DataError(f"{path}: no {key!r} in this .mat file")
    value = np.asarray(mat[key])
    if value.ndim != 2 or value.dtype.kind not in "iuf":
        raise DataError(f"{path}: {key!r} is {value.dtype} {value.shape}, not a 2-D label map")
    return value


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
        image = read_image(sample.image)
        try:
            target = self.read_target(sample.target)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{sample.target}: unreadable label file ({exc})") from exc
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_np, target_np = self.load(index)
        # A copy: decode_image's array is a read-only view of Pillow's bytes.
        image = tv_tensors.Image(torch.from_numpy(np.array(image_np)).permute(2, 0, 1))
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
