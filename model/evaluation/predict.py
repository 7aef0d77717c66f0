"""Label maps (palette PNGs, pixel = class id, the VOC way) and overlays for images, from a
checkpoint or an exported ONNX file (``fcn predict``).

Photos are decoded and results encoded by ``contract``, as the service does, so a file
segmented here and posted to ``POST /segment`` gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from contract import encode
from contract.decode import EXTENSIONS, ImageError, decode_image
from contract.palette import Color, color_table
from contract.schema import INPUT, LABELS, MetadataError, check_model, session_tensors
from model.checkpoint import load_checkpoint
from model.devices import amp_dtype, resolve_device
from model.errors import FCNError
from model.files import atomic_path, check_folder
from model.nets.preprocessing import Normalize

ONNX_SUFFIX = ".onnx"


class PredictError(FCNError, ValueError):
    """An image or model that cannot be used; the message names the file."""


class Predictor(Protocol):
    """A model that labels one image: RGB uint8 [H, W, 3] -> contract labels [H, W]."""

    palette: Sequence[Color]

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]: ...


class TorchPredictor:
    """A checkpoint's network on ``device``, with its recorded preprocessing."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", amp: str = "none"):
        ckpt = load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.autocast = amp_dtype(amp, self.device)
        self.net = ckpt.build_model().to(self.device).eval()
        self.normalize = Normalize(ckpt.preprocessing).to(self.device)
        self.num_classes = ckpt.spec.num_classes
        self.palette: Sequence[Color] = ckpt.palette

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # a writable copy
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None),
        ):
            logits = self.net(self.normalize(batch.to(self.device)))
        return encode.as_labels(logits.argmax(1)[0].cpu().numpy(), self.num_classes)


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

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        (labels,) = self.session.run([LABELS], {INPUT: np.ascontiguousarray(image)[None]})
        return np.asarray(labels[0])


def load_predictor(model: str | Path, device: str = "auto", amp: str = "none") -> Predictor:
    """A checkpoint (.pt) or an exported ONNX file (.onnx), ready to label images."""
    if Path(model).suffix.lower() == ONNX_SUFFIX:
        if amp != "none":
            raise PredictError(f"--amp {amp}: an ONNX model runs at its exported precision")
        return OnnxPredictor(model, device)
    return TorchPredictor(model, device, amp)


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
) -> Path:
    """The image blended with its class colours, as JPEG (``.jpg``) or PNG (other suffixes)."""
    image_format: encode.ImageFormat = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    data = encode.encode_overlay(
        image, labels, color_table(palette), alpha=alpha, image_format=image_format
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


def read_photo(path: Path) -> NDArray[np.uint8]:
    """A user's image as RGB uint8 [H, W, 3], by the contract's decoding rules."""
    try:
        return decode_image(path)
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
    device: str = "auto",
    amp: str = "none",
    on_unreadable: Callable[[PredictError], None] | None = None,
) -> list[Path]:
    """Write ``out/STEM.png`` (label map) and ``out/STEM_overlay.jpg`` for each image, with
    a checkpoint or an ONNX ``model``; returns the label map paths.

    An image that cannot be read raises ``PredictError``, or, given ``on_unreadable``, is
    passed to it and skipped. ``out`` is created only when there is something to write.
    """
    out_dir = check_folder(out)
    images = collect_images(inputs)
    predictor = load_predictor(model, device, amp)
    written: list[Path] = []
    for path in images:
        try:
            image = read_photo(path)
        except PredictError as exc:
            if on_unreadable is None:
                raise
            on_unreadable(exc)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = predictor(image)
        written.append(write_label_png(labels, predictor.palette, out_dir / f"{path.stem}.png"))
        if overlays:
            overlay_path = out_dir / f"{path.stem}_overlay.jpg"
            write_overlay(image, labels, predictor.palette, overlay_path, alpha)
    return written
