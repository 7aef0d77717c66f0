"""Joint transforms keep image and target aligned; padding uses the mean colour and 255."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from model.data.transforms import RandomScale, collate_padded, train_transforms
from model.nets.preprocessing import CAFFE, TORCHVISION

MEAN = TORCHVISION.mean_rgb_255


def pair(h: int = 12, w: int = 16) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An image whose red channel encodes x and green y, and a target = x + W * y mod 7."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xx, yy, torch.full_like(xx, 9)]).to(torch.uint8)
    target = ((xx + w * yy) % 7).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(target)


def test_mean_colour_is_the_weights_mean() -> None:
    assert MEAN == (124, 116, 104)
    assert CAFFE.mean_rgb_255 == (123, 117, 104)  # Caffe's BGR mean, reversed


def test_nothing_asked_means_native_size() -> None:
    assert train_transforms(None, None, False, MEAN) is None


def test_crop_larger_than_the_image_pads_with_mean_and_255() -> None:
    torch.manual_seed(0)
    transform = train_transforms([20, 24], None, False, MEAN)
    assert transform is not None
    image, target = transform(*pair())
    assert image.shape == (3, 20, 24)
    assert target.shape == (20, 24)
    pad = target == 255
    assert int(pad.sum()) == 20 * 24 - 12 * 16
    # Padded pixels carry the mean colour; the rest are the original pixels, aligned.
    assert (image.permute(1, 2, 0)[pad] == torch.tensor(MEAN, dtype=torch.uint8)).all()
    kept = ~pad
    x, y = image[0][kept].long(), image[1][kept].long()
    assert torch.equal(target[kept].long(), (x + 16 * y) % 7)


def test_random_crop_and_flip_keep_pixels_and_labels_together() -> None:
    transform = train_transforms([8, 8], None, True, MEAN)
    assert transform is not None
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transform(*pair())
        assert image.shape == (3, 8, 8)
        x, y = image[0].long(), image[1].long()
        assert torch.equal(target.long(), (x + 16 * y) % 7)
        flipped += int(x[0, 0] > x[0, -1])
    assert 0 < flipped < 12


def test_random_scale_resizes_both_and_keeps_label_values() -> None:
    torch.manual_seed(0)
    image, target = pair(40, 40)
    scaled_image, scaled_target = RandomScale(0.5, 0.5)(image, target)
    assert scaled_image.shape == (3, 20, 20)
    assert scaled_target.shape == (20, 20)
    assert isinstance(scaled_target, tv_tensors.Mask)
    # Nearest neighbour: no interpolated label values.
    assert set(scaled_target.unique().tolist()) <= set(target.unique().tolist())
    sizes = {RandomScale(0.5, 2.0)(image, target)[1].shape[0] for _ in range(10)}
    assert len(sizes) > 1
    assert all(20 <= s <= 80 for s in sizes)
    with pytest.raises(ValueError, match="0 < low <= high"):
        RandomScale(2.0, 1.0)


def test_same_seed_same_augmentation() -> None:
    transform = train_transforms([10, 10], [0.5, 1.5], True, MEAN)
    assert transform is not None
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        results.append(transform(*pair(30, 30)))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_collate_pads_to_the_largest() -> None:
    images, targets = collate_padded([pair(10, 12), pair(12, 8)], MEAN)
    assert images.shape == (2, 3, 12, 12)
    assert targets.shape == (2, 12, 12)
    assert type(images) is torch.Tensor
    assert (targets[0, 10:] == 255).all()
    assert (targets[1, :, 8:] == 255).all()
    assert (images[1, :, :, 8:] == torch.tensor(MEAN, dtype=torch.uint8).view(3, 1, 1)).all()
    assert torch.equal(images[0, :, :10, :], pair(10, 12)[0].as_subclass(torch.Tensor))
