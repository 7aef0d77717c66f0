"""PASCAL VOC2012 and SBD fetched with torchvision's downloaders, into the layouts
model.data.layouts reads."""

from __future__ import annotations

import os
from pathlib import Path


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
