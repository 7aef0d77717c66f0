"""The one rule for which image files a list of paths names, shared by ``fcn predict``,
``fcn segment`` (the HTTP client) and int8 calibration folders.

A file named is taken whatever its ending. A folder gives its image files (by ending,
``contract.decode.EXTENSIONS``) at any depth, sorted, leaving out hidden files and folders
and anything under the output folder. Each image is known by its *stem*: its path relative
to the folder it was found in, without the ending (``a/b/cat`` for ``DIR/a/b/cat.jpg``), or
its bare stem when named directly. Outputs are named by stem, so two images with one stem
are refused before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from contract.decode import EXTENSIONS


class InputError(ValueError):
    """Inputs that cannot be taken as asked: a missing path, no images, or two images that
    would write the same outputs."""


def _in_folder(folder: Path, skip: Path | None) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (skip is None or skip not in p.resolve().parents)
    )


def collect_images(
    paths: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None
) -> dict[Path, Path]:
    """Each image that ``paths`` (files and folders) name -> its stem, in order (see the
    module's rule); images under ``out_dir`` are left out. Raises ``InputError`` for a
    missing path, no images, or two images with one stem."""
    paths = list(paths)
    skip = None if out_dir is None else Path(out_dir).resolve()
    stems: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}  # stem -> the image that has it
    for item in map(Path, paths):
        if item.is_dir():
            pairs = [(p, p.relative_to(item).with_suffix("")) for p in _in_folder(item, skip)]
        elif item.is_file():
            pairs = [(item, Path(item.stem))]
        else:
            raise InputError(f"{item}: no such image or folder")
        for source, stem in pairs:
            if source in stems:
                continue  # named twice (a file and its folder): taken once
            if stem in claimed:
                raise InputError(
                    f"{source} and {claimed[stem]} would both write the outputs of {stem}"
                )
            claimed[stem] = source
            stems[source] = stem
    if not stems:
        shown = ", ".join(map(str, paths))
        raise InputError(f"no images ({', '.join(EXTENSIONS)}) in {shown}")
    return stems
