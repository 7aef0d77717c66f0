"""The data check: every missing, unreadable, mis-sized or mislabelled file of a data set,
each named, found before training or evaluation reads it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.palette import IGNORE_INDEX
from model.data.datasets import DataError, Sample, SegmentationDataset, read_image
from model.data.layouts import available_splits, detect_format, open_dataset
from model.data.reference_sets import SIFTFlowDataset


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a data set."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _problem(path: Path, error: DataError) -> Problem:
    return Problem(path, str(error).removeprefix(f"{path}: "))


def check_sample(dataset: SegmentationDataset, sample: Sample) -> list[Problem]:
    """Everything wrong with one pair: missing or unreadable files, sizes, label values
    (and those of its geometric labels, for SIFT Flow)."""
    problems: list[Problem] = []
    image_size: tuple[int, int] | None = None
    if not sample.image.is_file():
        problems.append(Problem(sample.image, "missing image"))
    else:
        try:
            # A full decode, as training's: truncated files fail here, not mid-training,
            # and the size is the one shown (EXIF orientation applied).
            image_size = read_image(sample.image).shape[:2]
        except DataError as exc:
            problems.append(_problem(sample.image, exc))
    problems += _check_labels(
        sample.target, dataset.read_target, dataset.num_classes, sample.image, image_size
    )
    if sample.geometry is not None and isinstance(dataset, SIFTFlowDataset):
        problems += _check_labels(
            sample.geometry,
            dataset.read_geometry,
            len(dataset.geometry_classes),
            sample.image,
            image_size,
            kind="geometric ",
        )
    return problems


def _check_labels(
    path: Path,
    read: Callable[[Path], np.ndarray],
    num_classes: int,
    image: Path,
    image_size: tuple[int, int] | None,
    *,
    kind: str = "",
) -> list[Problem]:
    """A label file's problems: missing, unreadable, not the image's size, values out of range."""
    if not path.is_file():
        return [Problem(path, f"missing {kind}label file for {image.name}")]
    try:
        target = read(path)
    except DataError as exc:
        return [_problem(path, exc)]
    except Exception as exc:
        return [Problem(path, f"unreadable {kind}label file ({exc})")]
    if target.ndim != 2:
        return [Problem(path, f"{kind}label map of shape {target.shape}, not H x W")]
    problems = []
    if image_size is not None and target.shape != image_size:
        (h, w), (ih, iw) = target.shape, image_size
        problems.append(
            Problem(path, f"{kind}label is {w}x{h} but image {image.name} is {iw}x{ih}")
        )
    values = np.unique(target)
    bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        problems.append(
            Problem(
                path,
                f"{kind}label values {bad[:5].tolist()} outside [0, {num_classes}) and not "
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


def check_splits(
    root: str | os.PathLike[str],
    data_format: str = "auto",
    splits: Sequence[str] | None = None,
    workers: int = 4,
) -> tuple[list[SegmentationDataset], list[Problem]]:
    """Open the named (default: every) split of ``root`` and check each file once."""
    fmt = detect_format(root) if data_format == "auto" else data_format
    names = splits or available_splits(root, fmt)
    datasets = [open_dataset(root, name, fmt) for name in names]
    seen: set[Path] = set()
    problems: list[Problem] = []
    for dataset in datasets:
        # Splits share files (trainval is train and val): each label file is checked once.
        todo = [i for i, s in enumerate(dataset.samples) if s.target not in seen]
        seen.update(dataset.samples[i].target for i in todo)
        problems.extend(check_dataset(dataset, todo, workers=workers, progress=True))
    return datasets, problems


def format_problems(problems: Sequence[Problem | str], limit: int = 20) -> str:
    """Up to ``limit`` problems, one per line, and how many more there are."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more problems")
    return "\n".join(lines)
