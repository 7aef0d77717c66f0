"""Label maps (palette PNGs, pixel = class id, the VOC way) and overlays for images, from a
checkpoint or an exported ONNX file (``fcn predict``).

Photos are decoded and results encoded by ``contract``, and an image too large for one pass
is cut into tiles by ``contract.tiling``, as the service does, so a file segmented here and
posted to ``POST /segment`` gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from contract import encode
from contract.decode import DEFAULT_MAX_PIXELS, EXTENSIONS, ImageError, decode_image, guard_bombs
from contract.palette import Color, color_table
from contract.schema import INPUT, LABELS, MetadataError, check_model, session_tensors
from contract.tiling import (
    DEFAULT_MAX_MODEL_PIXELS,
    DEFAULT_OVERLAP,
    TilePlan,
    Tiling,
    TilingError,
    check_tiles,
    cut,
    padded_pixels,
    segment_tiled,
)
from model.checkpoint import load_checkpoint
from model.devices import amp_dtype, resolve_device
from model.errors import FCNError
from model.files import atomic_path, check_folder
from model.nets.base import FCNBase
from model.nets.preprocessing import Normalize

ONNX_SUFFIX = ".onnx"
# The service's defaults (FCN_TILE_OVERLAP, FCN_MAX_MODEL_PIXELS, FCN_MAX_PIXELS), so that an
# image is cut here as it is there. An overlap of ``Tiling.exact_overlap`` makes tiled labels
# equal the whole image's; this one changes a few labels near the seams, for less work.
DEFAULT_TILE_OVERLAP = DEFAULT_OVERLAP
DEFAULT_MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


class PredictError(FCNError, ValueError):
    """An image or model that cannot be used; the message names the file."""


class TileError(FCNError, ValueError):
    """Tiling options that cannot work; the message names the flag."""


@dataclass(frozen=True)
class TileOptions:
    """When and how an image is cut into tiles: always when ``size`` > 0 (tiles of at most
    ``size`` a side), else only when its padded size exceeds ``max_model_pixels`` (None:
    never). Neighbouring tiles share ``overlap`` pixels.

    Options that cannot work are refused on construction, before any model or image is read.
    """

    size: int = 0
    overlap: int = DEFAULT_TILE_OVERLAP
    max_model_pixels: int | None = DEFAULT_MAX_MODEL_PIXELS

    def __post_init__(self) -> None:
        if self.size < 0:
            raise TileError(f"--tile-size must be 0 (no forced tiling) or more, got {self.size}")
        if self.overlap < 0:
            raise TileError(f"--tile-overlap must be 0 or more, got {self.overlap}")
        if self.max_model_pixels is not None and self.max_model_pixels < 1:
            raise TileError(f"--max-model-pixels must be 1 or more, got {self.max_model_pixels}")
        self.check(Tiling())  # the grid of every VGG16 FCN

    @property
    def max_pixels(self) -> int | None:
        """Padded pixels one pass may hold; None when nothing is ever tiled."""
        if self.max_model_pixels is not None:
            return self.max_model_pixels
        return padded_pixels(self.size, self.size) if self.size else None

    def check(self, tiling: Tiling) -> None:
        """Refuse options that cannot cut images for a net of ``tiling``."""
        limit = self.max_pixels
        if limit is None:
            return
        try:
            check_tiles(max_pixels=limit, overlap=self.overlap, tiling=tiling, tile_size=self.size)
        except TilingError as exc:
            raise TileError(self._name(exc)) from exc

    def plan(self, height: int, width: int, tiling: Tiling) -> TilePlan | None:
        """How an H x W image is cut for a net of ``tiling``; None when it runs whole."""
        limit = self.max_pixels
        if limit is None:
            return None
        try:
            return cut(
                height,
                width,
                max_pixels=limit,
                overlap=self.overlap,
                tiling=tiling,
                tile_size=self.size,
                always=bool(self.size),
            )
        except TilingError as exc:
            raise TileError(f"a {width}x{height} image: {self._name(exc)}") from exc

    def _name(self, exc: TilingError) -> str:
        """The contract's message, led by the flag at fault (and the limit it depends on)."""
        if exc.parameter == "tile_size":
            flag = f"--tile-size {self.size}"
        else:
            flag = f"--tile-overlap {self.overlap}"
        if self.max_model_pixels is not None:
            flag += f" (with --max-model-pixels {self.max_model_pixels})"
        return f"{flag}: {exc}"


class Predictor(Protocol):
    """A model that labels images: RGB uint8 [H, W, 3] -> contract labels [H, W], or a
    batch of one size, [N, H, W, 3] -> [N, H, W]; ``tiling`` says where it may be cut."""

    palette: Sequence[Color]
    classes: list[str]
    tiling: Tiling

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]: ...

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]: ...


def net_labels(
    net: nn.Module, normalize: Normalize, images: Tensor, autocast: torch.dtype | None = None
) -> Tensor:
    """The argmax labels [N, H, W] of uint8 images [N, 3, H, W] on their device."""
    with (
        torch.inference_mode(),
        torch.autocast(images.device.type, autocast, enabled=autocast is not None),
    ):
        return net(normalize(images)).argmax(1)  # type: ignore[no-any-return]


class TorchPredictor:
    """A checkpoint's network on ``device``, with its recorded preprocessing."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        amp: str = "none",
        shift_and_stitch: int = 1,
    ):
        ckpt = load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.autocast = amp_dtype(amp, self.device)
        net = ckpt.build_model()
        # Shift-and-stitch keeps the net's tiling: a label still depends on its context only.
        self.tiling = net.tiling
        self.net: nn.Module = stitched(net, shift_and_stitch, str(checkpoint))
        self.net.to(self.device).eval()
        self.normalize = Normalize(ckpt.preprocessing).to(self.device)
        self.num_classes = ckpt.spec.num_classes
        self.palette: Sequence[Color] = ckpt.palette
        self.classes: list[str] = list(ckpt.classes)

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]:
        batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a writable copy
        labels = net_labels(self.net, self.normalize, batch.to(self.device), self.autocast)
        return encode.as_labels(labels.cpu().numpy(), self.num_classes)

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        return np.asarray(self.predict_batch(image[None])[0])


class OnnxPredictor:
    """An exported schema-1 file on ONNX Runtime (CUDA when asked and present, else CPU)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        source = str(path)
        if not Path(path).is_file():
            raise PredictError(f"{source}: no such model file")
        try:
            self.session = ort.InferenceSession(source, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise PredictError(f"{source}: ONNX Runtime cannot load it ({exc})") from exc
        # The contract read off the session itself, as the service reads it.
        try:
            meta = check_model(
                self.session.get_modelmeta().custom_metadata_map,
                session_tensors(self.session.get_inputs()),
                session_tensors(self.session.get_outputs()),
                source,
            )
        except MetadataError as exc:
            raise PredictError(str(exc)) from exc
        self.palette: Sequence[Color] = meta.palette
        self.tiling = meta.tiling
        self.classes: list[str] = list(meta.classes)

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]:
        (labels,) = self.session.run([LABELS], {INPUT: np.ascontiguousarray(images)})
        return np.asarray(labels)

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        return np.asarray(self.predict_batch(image[None])[0])


def stitched(net: FCNBase, factor: int, source: str) -> nn.Module:
    """``net``, or with ``factor`` > 1 its shift-and-stitch at output stride 32 / factor
    (``model.nets.shift_stitch``, the rarefied net); a net it cannot use names ``source``."""
    if factor == 1:
        return net
    from model.nets.shift_stitch import ShiftStitchError, shift_and_stitch

    try:
        return shift_and_stitch(net, factor)
    except ShiftStitchError as exc:
        raise PredictError(f"--shift-and-stitch {factor}: {source}: {exc}") from exc


def load_predictor(
    model: str | Path, device: str = "auto", amp: str = "none", shift_and_stitch: int = 1
) -> Predictor:
    """A checkpoint (.pt) or an exported ONNX file (.onnx), ready to label images."""
    if Path(model).suffix.lower() == ONNX_SUFFIX:
        if amp != "none":
            raise PredictError(f"--amp {amp}: an ONNX model runs at its exported precision")
        if shift_and_stitch != 1:
            raise PredictError(
                f"--shift-and-stitch {shift_and_stitch}: {model} is an exported graph; give "
                "the checkpoint (or export it with the option)"
            )
        return OnnxPredictor(model, device)
    return TorchPredictor(model, device, amp, shift_and_stitch)


def segment(predictor: Predictor, image: NDArray[np.uint8], tiles: TileOptions) -> NDArray[Any]:
    """The labels [H, W] of one image, whole or cut into tiles (one pass each) as ``tiles``
    says."""
    plan = tiles.plan(image.shape[0], image.shape[1], predictor.tiling)
    if plan is None:
        return predictor(image)
    return segment_tiled(image, plan, predictor.predict_batch)


def write_label_png(labels: NDArray[Any], palette: Sequence[Color], path: Path) -> Path:
    """A palette PNG whose pixel values are the class ids (16-bit grey past 255 classes)."""
    labels = encode.as_labels(labels, len(palette))
    data = encode.encode_labels(labels, color_table(palette))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_overlay(
    image: NDArray[np.uint8],
    labels: NDArray[Any],
    palette: Sequence[Color],
    path: Path,
    alpha: float = encode.DEFAULT_ALPHA,
    *,
    legend_classes: Sequence[str] | None = None,
) -> Path:
    """The image blended with its class colours, as JPEG (``.jpg``) or PNG (other suffixes);
    with ``legend_classes``, the legend of the classes present below it."""
    image_format: encode.ImageFormat = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    data = encode.encode_overlay(
        image,
        labels,
        color_table(palette),
        alpha=alpha,
        image_format=image_format,
        legend_classes=legend_classes,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in named folders; stems must
    be unique since outputs are named by stem."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(p for p in sorted(item.iterdir()) if p.suffix.lower() in EXTENSIONS)
        elif item.is_file():
            found.append(item)
        else:
            raise PredictError(f"{item}: no such image or folder")
    by_stem: dict[str, Path] = {}
    for path in found:
        if path.stem in by_stem:
            raise PredictError(f"{path} and {by_stem[path.stem]} would both write {path.stem}.png")
        by_stem[path.stem] = path
    if not found:
        raise PredictError(f"no images ({', '.join(EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return found


def read_photo(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> NDArray[np.uint8]:
    """A user's image as RGB uint8 [H, W, 3], by the contract's decoding rules; at most
    ``max_pixels`` (width x height), and within Pillow's bomb threshold (``guard_bombs``)."""
    try:
        return decode_image(path, max_pixels)
    except ImageError as exc:
        raise PredictError(f"{path} {exc}") from exc
    except OSError as exc:
        raise PredictError(f"{path}: unreadable ({exc.strerror or exc})") from exc


def predict(
    model: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlays: bool = True,
    alpha: float = encode.DEFAULT_ALPHA,
    legend: bool = False,
    device: str = "auto",
    amp: str = "none",
    tile_size: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    max_model_pixels: int = DEFAULT_MAX_MODEL_PIXELS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_unreadable: Callable[[PredictError], None] | None = None,
    shift_and_stitch: int = 1,
) -> list[Path]:
    """Write ``out/STEM.png`` (label map) and ``out/STEM_overlay.jpg`` for each image (with
    the legend of its classes below, given ``legend``), with a checkpoint or an ONNX
    ``model``; returns the label map paths.

    An image whose padded size exceeds ``max_model_pixels``, or any image when ``tile_size``
    is given, is cut into tiles sharing ``tile_overlap`` pixels (``contract.tiling``). An
    image that cannot be read, or has more than ``max_image_pixels``, raises
    ``PredictError``, or, given ``on_unreadable``, is passed to it and skipped. ``out`` is
    created only when there is something to write.

    As the service does, this raises Pillow's process-wide bomb threshold to
    ``max_image_pixels`` and makes its bomb warning an error.
    """
    tiles = TileOptions(tile_size, tile_overlap, max_model_pixels)
    guard_bombs(max_image_pixels)
    out_dir = check_folder(out)
    images = collect_images(inputs)
    predictor = load_predictor(model, device, amp, shift_and_stitch)
    tiles.check(predictor.tiling)
    written: list[Path] = []
    for path in images:
        try:
            image = read_photo(path, max_image_pixels)
        except PredictError as exc:
            if on_unreadable is None:
                raise
            on_unreadable(exc)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = segment(predictor, image, tiles)
        written.append(write_label_png(labels, predictor.palette, out_dir / f"{path.stem}.png"))
        if overlays:
            overlay_path = out_dir / f"{path.stem}_overlay.jpg"
            classes = predictor.classes if legend else None
            write_overlay(
                image, labels, predictor.palette, overlay_path, alpha, legend_classes=classes
            )
    return written
