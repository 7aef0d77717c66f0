"""A data set's pairs: photos decoded exactly as ``fcn predict`` and the service decode
them (contract.decode), label files read as class ids, and unreadable files named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.decode import decode_image
from model.data.datasets import DataError
from model.data.layouts import folder_dataset
from tests.model.data.sets import assert_pair, write_folder, write_mask

H, W = 20, 24  # images/a.jpg and masks/a.png of write_folder


def _exif_rotated(path: Path) -> tuple[Path, tuple[int, int]]:
    # Orientation 6: stored W x H, shown rotated 90 degrees, H wide and W high.
    rng = np.random.default_rng(3)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = path.with_suffix(".jpg")
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(photo, exif=exif)
    return photo, (W, H)


def _sixteen_bit(path: Path) -> tuple[Path, tuple[int, int]]:
    # 16-bit samples keep their high byte; Pillow's own RGB conversion would clip to 255.
    values = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    photo = path.with_suffix(".png")
    Image.fromarray(values).save(photo)
    return photo, (H, W)


def _transparent(path: Path) -> tuple[Path, tuple[int, int]]:
    # The colour under transparent pixels never shows: they are composited over white.
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, : W // 2, 3] = 0
    rgba[:, W // 2 :, 3] = 128
    photo = path.with_suffix(".png")
    Image.fromarray(rgba).save(photo)
    return photo, (H, W)


def _gif(path: Path) -> tuple[Path, tuple[int, int]]:
    photo = path.with_suffix(".gif")
    Image.new("P", (W, H), 3).save(photo)
    return photo, (H, W)


PHOTOS = [_exif_rotated, _sixteen_bit, _transparent, _gif]


@pytest.mark.parametrize("write_photo", PHOTOS, ids=lambda f: f.__name__.strip("_"))
def test_photo_decodes_as_contract_decode(
    tmp_path: Path, write_photo: Callable[[Path], tuple[Path, tuple[int, int]]]
) -> None:
    targets = write_folder(tmp_path)
    (tmp_path / "images" / "a.jpg").unlink()
    photo, size = write_photo(tmp_path / "images" / "a")
    target = targets["a"] if size == (H, W) else np.ascontiguousarray(targets["a"].T)
    write_mask(tmp_path / "masks" / "a.png", target)
    dataset = folder_dataset(tmp_path)
    assert dataset.samples[0].image == photo
    assert np.array_equal(assert_pair(dataset, 0, size), target)
    image, _ = dataset[0]
    expected = torch.from_numpy(np.array(decode_image(photo.read_bytes()))).permute(2, 0, 1)
    assert torch.equal(image, expected)
    if write_photo is not _gif:  # a rule of its own: Pillow's plain conversion differs
        with Image.open(photo) as picture:
            naive = np.asarray(picture.convert("RGB"))
        assert not np.array_equal(naive, expected.permute(1, 2, 0).numpy())


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"%PDF-1.4 a document", "is not an image format we read"),
        (b"\xff\xd8\xff\xe0 truncated", "has an unreadable JPEG header"),
    ],
    ids=["empty", "pdf", "truncated-jpeg"],
)
def test_unreadable_photo_is_a_data_error_naming_the_file(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    write_folder(tmp_path)
    photo = tmp_path / "images" / "a.jpg"
    photo.write_bytes(content)
    with pytest.raises(DataError, match=f"^{photo}: unreadable image \\({reason}"):
        folder_dataset(tmp_path)[0]


def test_missing_file_is_named_with_the_check_to_run(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "masks" / "c.png").unlink()
    with pytest.raises(DataError, match=r"c\.png: no such file \(run `fcn data check"):
        folder_dataset(tmp_path)[2]


def test_label_png_of_another_mode_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path)
    mask = tmp_path / "masks" / "b.png"
    Image.new("LA", (25, 20)).save(mask)
    with pytest.raises(DataError, match=f"{mask}: label PNG of mode LA, expected a palette"):
        folder_dataset(tmp_path)[1]
