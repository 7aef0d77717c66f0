"""Joint image/target transforms on torchvision.transforms.v2 and the padding collate.

Targets are ``tv_tensors.Mask``, so v2 resizes them with nearest neighbours; padding
fills images with the weights' mean colour and targets with 255, which the loss ignores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from contract.palette import IGNORE_INDEX


class RandomScale(v2.Transform):  # type: ignore[misc]
    """Resize by a factor drawn uniformly from [low, high]: images bilinear (antialiased),
    masks nearest (v2 dispatches on the tv_tensor type)."""

    def __init__(self, low: float, high: float):
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"scale range needs 0 < low <= high, got [{low}, {high}]")
        self.low = low
        self.high = high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(
            TF.get_size(x) for x in flat_inputs if isinstance(x, tv_tensors.Image | tv_tensors.Mask)
        )
        factor = float(torch.empty(()).uniform_(self.low, self.high))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            TF.resize,
            inpt,
            params["size"],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )


def train_transforms(
    crop_size: Sequence[int] | None,
    scale_range: Sequence[float] | None,
    flip: bool,
    fill_rgb: tuple[int, int, int],
) -> v2.Compose | None:
    """Training augmentation: optional random scale, random crop (padding what is smaller
    than the crop: images with ``fill_rgb``, targets with 255) and horizontal flip.

    ``None`` when nothing is asked for: the reference trains at native size, unaugmented.
    """
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(float(scale_range[0]), float(scale_range[1])))
    if crop_size is not None:
        fill: dict[type, Any] = {tv_tensors.Image: fill_rgb, tv_tensors.Mask: IGNORE_INDEX}
        steps.append(v2.RandomCrop(list(crop_size), pad_if_needed=True, fill=fill))
    if flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps) if steps else None


def collate_padded(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], fill_rgb: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image [3, H, W], target [H, W]) pairs, padding smaller ones at the bottom and
    right to the largest H and W (images with ``fill_rgb``, targets with 255).

    Returns plain tensors: images uint8 [N, 3, H, W], targets [N, H, W].
    """
    height = max(int(image.shape[-2]) for image, _ in batch)
    width = max(int(image.shape[-1]) for image, _ in batch)
    images: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for pair_image, pair_target in batch:
        image = pair_image.as_subclass(torch.Tensor)
        target = pair_target.as_subclass(torch.Tensor)
        pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
        if pad_h or pad_w:
            fill = torch.tensor(fill_rgb, dtype=image.dtype).view(3, 1, 1)
            canvas = fill.repeat(1, height, width)
            canvas[:, : image.shape[-2], : image.shape[-1]] = image
            image = canvas
            target = F.pad(target, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        images.append(image)
        targets.append(target)
    return torch.stack(images), torch.stack(targets)
