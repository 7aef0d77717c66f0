"""``fcn predict``: label maps (palette PNGs, pixel = class id, the VOC way) and overlays
for images, from a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from contract.palette import Color, palette_bytes
from model.checkpoint import load_checkpoint
from model.commands.arguments import add_device_arguments
from model.data.datasets import IMAGE_EXTENSIONS, DataError
from model.devices import amp_dtype, resolve_device
from model.files import atomic_path, check_folder
from model.nets.preprocessing import Normalize

DEFAULT_ALPHA = 0.5


def predict_labels(
    net: nn.Module,
    normalize: Normalize,
    image: np.ndarray,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Class ids [H, W] (int64) for one RGB uint8 image [H, W, 3]."""
    batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
    ):
        logits: Tensor = net(normalize(batch))
    return logits.argmax(1)[0].cpu().numpy()


def save_label_png(labels: np.ndarray, palette: Sequence[Color], path: Path) -> Path:
    """A palette PNG whose pixel values are the class ids (16-bit grey past 256 classes)."""
    if len(palette) > 256:
        picture = Image.fromarray(labels.astype(np.uint16))  # Pillow makes it I;16
    else:
        picture = Image.fromarray(labels.astype(np.uint8), mode="P")
        picture.putpalette(palette_bytes(list(palette)))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def overlay_image(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Color], alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """The image blended with each pixel's class colour: RGB uint8 [H, W, 3]."""
    colors = np.zeros((max(len(palette), int(labels.max()) + 1), 3), dtype=np.float32)
    colors[: len(palette)] = np.asarray(palette, dtype=np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colors[labels]
    result: np.ndarray = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return result


def save_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Color],
    path: Path,
    alpha: float = DEFAULT_ALPHA,
) -> Path:
    """``overlay_image`` written as JPEG (``.jpg``) or PNG (any other suffix)."""
    picture = Image.fromarray(overlay_image(image, labels, palette, alpha))
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            picture.save(tmp, format="JPEG", quality=90)
        else:
            picture.save(tmp, format="PNG")
    return path


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in named folders; stems must
    be unique since outputs are named by stem."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(p for p in sorted(item.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such image or folder")
    by_stem: dict[str, Path] = {}
    for path in found:
        if path.stem in by_stem:
            raise DataError(f"{path} and {by_stem[path.stem]} would both write {path.stem}.png")
        by_stem[path.stem] = path
    if not found:
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}"
        )
    return found


def read_photo(path: Path) -> np.ndarray:
    """A user's image as RGB uint8 [H, W, 3]: EXIF orientation applied, any mode converted."""
    try:
        with Image.open(path) as img:
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlays: bool = True,
    alpha: float = DEFAULT_ALPHA,
    device: str = "auto",
    amp: str = "none",
    on_unreadable: Callable[[DataError], None] | None = None,
) -> list[Path]:
    """Write ``out/STEM.png`` (label map) and ``out/STEM_overlay.jpg`` for each image;
    returns the label map paths.

    An image that cannot be read raises ``DataError``, or, given ``on_unreadable``, is
    passed to it and skipped. ``out`` is created only when there is something to write.
    """
    out_dir = check_folder(out)
    images = collect_images(inputs)
    ckpt = load_checkpoint(checkpoint)
    target_device = resolve_device(device)
    autocast = amp_dtype(amp, target_device)
    net = ckpt.build_model().to(target_device).eval()
    normalize = Normalize(ckpt.preprocessing).to(target_device)
    written: list[Path] = []
    for path in images:
        try:
            image = read_photo(path)
        except DataError as exc:
            if on_unreadable is None:
                raise
            on_unreadable(exc)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = predict_labels(net, normalize, image, target_device, autocast)
        written.append(save_label_png(labels, ckpt.palette, out_dir / f"{path.stem}.png"))
        if overlays:
            save_overlay(image, labels, ckpt.palette, out_dir / f"{path.stem}_overlay.jpg", alpha)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE|DIR", help="images or folders of images"
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (.pt)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--overlay", action=argparse.BooleanOptionalAction, default=True,
        help="also write STEM_overlay.jpg (default: yes)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="overlay opacity of the colours"
    )
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from model.cli import CLIError, check_output_folder

    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    check_output_folder(args.out)
    unreadable: list[DataError] = []

    def skip(exc: DataError) -> None:  # one bad photo does not stop a folder of them
        print(f"fcn predict: skipped {exc}", file=sys.stderr)
        unreadable.append(exc)

    written = predict(
        args.checkpoint,
        args.inputs,
        args.out,
        overlays=args.overlay,
        alpha=args.alpha,
        device=args.device,
        amp=args.amp,
        on_unreadable=skip,
    )
    maps = f"{len(written)} label map{'s' if len(written) != 1 else ''}"
    if not unreadable:
        print(f"wrote {maps} to {args.out}")
        return 0
    where = f" to {args.out}" if written else ""
    print(f"wrote {maps}{where}; {len(unreadable)} image(s) unreadable, skipped (above)")
    return 1
