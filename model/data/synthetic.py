"""A synthetic segmentation data set in PASCAL VOC's exact layout, deterministic for a seed.

Five object classes told apart by shape (classes share colour families), drawn at varied scales
over one another on textured, noisy, cluttered backgrounds, with a thin 255 band on every
object boundary. Thin bars, rings and small objects are what a stride-32 net blurs away.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from contract.palette import IGNORE_INDEX, palette_bytes, voc_colormap
from model.data.datasets import DataError
from model.files import current_umask

SYNTH_CLASSES = ("background", "disc", "square", "triangle", "ring", "bar")
# Shapes are drawn SUPERSAMPLE x larger, then averaged down: the mean is the coverage used
# to blend the image's edges, coverage >= 0.5 is the label.
SUPERSAMPLE = 4
SPLIT_CODES = {"train": 1, "val": 2}
# The layouts ``write_synthetic`` writes: VOC's, and the reference's other data sets'.
LAYOUTS = ("voc", "context", "siftflow", "nyud")
# Hue (in turns) at the centre of each class's colour family.
FAMILY_HUES = {"disc": 0.02, "ring": 0.02, "square": 0.36, "triangle": 0.36, "bar": 0.66}
JPEG_QUALITY = 90

Points = list[tuple[float, float]]


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> Points:
    c, s = math.cos(angle), math.sin(angle)
    x = cx + c * points[:, 0] - s * points[:, 1]
    y = cy + s * points[:, 0] + c * points[:, 1]
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _ellipse(a: float, b: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _rectangle(half_w: float, half_h: float) -> np.ndarray:
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def _shape_polygons(
    cls: str, rng: np.random.Generator, r: float, thin: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline (and hole, for rings) of one object centred at 0, in pixels."""
    if cls == "disc":
        return _ellipse(r, r * rng.uniform(0.8, 1.0)), None
    if cls == "square":
        # Side chosen for the disc's area, so size does not tell them apart; corners do.
        half = r * math.sqrt(math.pi) / 2
        return _rectangle(half, half * rng.uniform(0.85, 1.0)), None
    if cls == "triangle":
        angles = np.array([90.0, 210.0, 330.0]) + rng.uniform(-12, 12, 3)
        t = np.radians(angles)
        radius = 1.25 * r
        return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1), None
    if cls == "ring":
        b = r * rng.uniform(0.8, 1.0)
        width = max(thin, r * rng.uniform(0.18, 0.3))
        return _ellipse(r, b), _ellipse(max(r - width, 1.0), max(b - width, 1.0))
    if cls == "bar":
        length = r * rng.uniform(2.0, 4.0)
        return _rectangle(length / 2, thin * rng.uniform(1.0, 1.6) / 2), None
    raise ValueError(f"unknown shape {cls!r}")


def _coverage(size: tuple[int, int], outline: Points, hole: Points | None) -> np.ndarray:
    """Fraction of each pixel inside the shape, float32 [H, W] in [0, 1]."""
    height, width = size
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    scale = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in outline]
    draw.polygon(scale, fill=255)
    if hole is not None:
        draw.polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in hole], fill=0)
    small = canvas.reduce(SUPERSAMPLE)
    return np.asarray(small, dtype=np.float32) / 255.0


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, h in turns, s and v in [0, 1] -> RGB float [3] in [0, 255]."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random grid upsampled bicubically, float32 [H, W]."""
    height, width = size
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    field = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    out = np.asarray(field, dtype=np.float32)
    scaled: np.ndarray = (out - out.min()) / max(float(out.max() - out.min()), 1.0)
    return scaled


def _pattern(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A texture in [-1, 1]: stripes at a random angle and period, or blotches, or grain."""
    height, width = size
    kind = rng.integers(3)
    if kind == 0:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(3, 12)
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        stripes: np.ndarray = np.sin(2 * math.pi * phase / period).astype(np.float32)
        return stripes
    if kind == 1:
        blotches: np.ndarray = _smooth_noise(rng, size, int(rng.integers(6, 16))) * 2 - 1
        return blotches
    return rng.uniform(-1, 1, size).astype(np.float32)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Two muted colours blended by smooth noise, plus a texture: float32 [H, W, 3]."""
    c1 = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9))
    c2 = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9))
    mix = _smooth_noise(rng, size, int(rng.integers(3, 8)))[..., None]
    image: np.ndarray = c1 * (1 - mix) + c2 * mix
    image *= 1 + rng.uniform(0.05, 0.2) * _pattern(rng, size)[..., None]
    return image


def _clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Background lines and blobs in muted colours: edges and strokes that are no object."""
    height, width = image.shape[:2]
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, 1, 2) * [width, height]
        radius = rng.uniform(0.03, 0.12) * min(height, width)
        draw.ellipse([cx - radius, cy - radius * 0.6, cx + radius, cy + radius * 0.6], fill=255)
    alpha = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)[..., None]
    color = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.95))
    image[:] = image * (1 - alpha / 255) + color * (alpha / 255)


def _class_color(rng: np.random.Generator, cls_index: int) -> np.ndarray:
    """Saturated colours from the class's hue family; families are shared (disc and ring,
    square and triangle), so colour narrows the class down and shape decides."""
    hue = (FAMILY_HUES[SYNTH_CLASSES[cls_index]] + rng.normal(0, 0.04)) % 1.0
    return _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))


def void_band(target: np.ndarray, band: int) -> np.ndarray:
    """Pixels within ``band`` pixels (4-neighbour steps) of a change of label: bool [H, W]."""
    boundary = np.zeros(target.shape, dtype=bool)
    diff_y = target[1:, :] != target[:-1, :]
    diff_x = target[:, 1:] != target[:, :-1]
    boundary[1:, :] |= diff_y
    boundary[:-1, :] |= diff_y
    boundary[:, 1:] |= diff_x
    boundary[:, :-1] |= diff_x
    grown = boundary
    for _ in range(band - 1):
        grown = grown.copy()
        grown[1:, :] |= boundary[:-1, :]
        grown[:-1, :] |= boundary[1:, :]
        grown[:, 1:] |= boundary[:, :-1]
        grown[:, :-1] |= boundary[:, 1:]
        boundary = grown
    return grown


def render_sample(
    rng: np.random.Generator, size: tuple[int, int], band: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One image, RGB uint8 [H, W, 3], and its target, uint8 [H, W] (255 on boundaries)."""
    height, width = size
    short = min(height, width)
    image = _background(rng, size)
    _clutter(rng, image)
    target = np.zeros(size, dtype=np.uint8)
    # Thin parts (bars, ring walls) stay a few pixels wide: below one stride-8 cell.
    thin = max(3.0, 0.035 * short)
    for _ in range(int(rng.integers(2, 6))):
        cls_index = int(rng.integers(1, len(SYNTH_CLASSES)))
        # Log-uniform size: as many small objects as large ones.
        r = short * math.exp(rng.uniform(math.log(0.06), math.log(0.24)))
        outline, hole = _shape_polygons(SYNTH_CLASSES[cls_index], rng, r, thin)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        angle = rng.uniform(0, 2 * math.pi)
        cover = _coverage(
            size,
            _rotate(outline, angle, cx, cy),
            None if hole is None else _rotate(hole, angle, cx, cy),
        )
        color = _class_color(rng, cls_index)
        texture = 1 + rng.uniform(0.05, 0.3) * _pattern(rng, size)[..., None]
        alpha = cover[..., None]
        image = image * (1 - alpha) + color * texture * alpha
        target[cover >= 0.5] = cls_index
    image += rng.normal(0, rng.uniform(3, 12), image.shape).astype(np.float32)
    pixels = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    pixels = pixels.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    if band > 0:
        target[void_band(target, band)] = IGNORE_INDEX
    return np.asarray(pixels), target


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: image ``i`` of a split is the same whatever N and M are."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _write_split(
    root: Path,
    split: str,
    count: int,
    size: tuple[int, int],
    *,
    seed: int,
    band: int,
    progress: Callable[[int], None] | None,
) -> list[str]:
    palette = palette_bytes(voc_colormap(len(SYNTH_CLASSES)))
    ids = [f"{split}_{i:06d}" for i in range(count)]
    for i, sample_id in enumerate(ids):
        image, target = render_sample(sample_rng(seed, split, i), size, band)
        Image.fromarray(image).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=JPEG_QUALITY)
        label = Image.fromarray(target, mode="P")
        label.putpalette(palette)
        label.save(root / "SegmentationClass" / f"{sample_id}.png", optimize=False)
        if progress is not None:
            progress(1)
    return ids


def write_synthetic(
    out: str | os.PathLike[str],
    train: int,
    val: int,
    size: tuple[int, int] = (128, 128),
    *,
    seed: int = 0,
    band: int = 1,
    progress: Callable[[int], None] | None = None,
    layout: str = "voc",
) -> Path:
    """Write ``train`` + ``val`` images in a data set's layout under ``out`` and return it.

    ``voc``: JPEGImages/ID.jpg, SegmentationClass/ID.png (palette PNG, pixel = class id, 255
    on boundaries), ImageSets/Segmentation/{train,val,trainval}.txt and classes.json;
    ``context``, ``siftflow``, ``nyud``: the reference's layouts (model.data.synthetic_sets).
    The folder appears complete or not at all: it is built beside ``out`` and renamed at the end.
    """
    from model.data.synthetic_sets import WRITERS

    if layout != "voc" and layout not in WRITERS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    target = Path(out)
    if train < 1 or val < 1:
        # Training validates on val and `fcn eval` scores it: an empty split is refused there.
        raise DataError(f"need at least 1 training and 1 val image, got {train} and {val}")
    if min(size) < 8:
        raise DataError(f"image size {size[0]}x{size[1]} is too small (at least 8x8)")
    if band < 0:
        raise DataError(f"band must be 0 or more pixels, got {band}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: already exists and is not an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        # mkdtemp makes a private 0700 folder; give it a plain mkdir's mode.
        tmp.chmod(0o777 & ~current_umask())
        if layout != "voc":
            WRITERS[layout](tmp, train, val, size, seed=seed, band=band, progress=progress)
            return _publish(tmp, target)
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        lists: dict[str, list[str]] = {}
        for split, count in (("train", train), ("val", val)):
            lists[split] = _write_split(
                tmp, split, count, size, seed=seed, band=band, progress=progress
            )
        lists["trainval"] = lists["train"] + lists["val"]
        for split, ids in lists.items():
            (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in ids)
            )
        classes = {
            "classes": list(SYNTH_CLASSES),
            "palette": [list(c) for c in voc_colormap(len(SYNTH_CLASSES))],
            "generator": {
                "name": "fcn data synth",
                "seed": seed,
                "size": list(size),
                "band": band,
                "train": train,
                "val": val,
            },
        }
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        return _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path) -> Path:
    """Move the finished folder into place (over an empty one)."""
    if target.exists():
        target.rmdir()
    os.replace(tmp, target)
    return target
