"""Predictors: a checkpoint's net (PyTorch) or an exported file (ONNX Runtime or OpenVINO,
chosen by ``contract.runtimes`` as the service chooses) that labels images (and says how sure
it is), loaded by one function that also refuses the options a model cannot take, and run on
one image whole or cut into tiles (``segment``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from contract import encode
from contract.palette import Color
from contract.providers import missing_library
from contract.runtimes import OPENVINO, OpenVinoModel, RuntimeChoiceError, choose
from contract.schema import (
    CONFIDENCE,
    INPUT,
    LABELS,
    MetadataError,
    check_model,
    no_confidence,
    session_tensors,
)
from contract.tiling import Tiling, segment_tiled, segment_tiled_maps
from model.checkpoint import load_checkpoint
from model.devices import amp_dtype, resolve_device
from model.errors import FCNError
from model.evaluation.calibration import confidence_of
from model.evaluation.tiles import TileOptions
from model.nets.base import FCNBase
from model.nets.preprocessing import Normalize, Preprocessing

ONNX_SUFFIX = ".onnx"


class PredictError(FCNError, ValueError):
    """An image or model that cannot be used; the message names the file."""


class Predictor(Protocol):
    """A model that labels images: RGB uint8 [H, W, 3] -> contract labels [H, W], or a
    batch of one size, [N, H, W, 3] -> [N, H, W]; ``tiling`` says where it may be cut.
    Where ``has_confidence``, ``predict_with_confidence`` adds the contract's confidence."""

    palette: Sequence[Color]
    classes: list[str]
    tiling: Tiling
    has_confidence: bool

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]: ...

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]: ...

    def predict_with_confidence(
        self, images: NDArray[np.uint8]
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]: ...


def net_labels(
    net: nn.Module, normalize: Normalize, images: Tensor, autocast: torch.dtype | None = None
) -> Tensor:
    """The argmax labels [N, H, W] of uint8 images [N, 3, H, W] on their device."""
    with (
        torch.inference_mode(),
        torch.autocast(images.device.type, autocast, enabled=autocast is not None),
    ):
        return net(normalize(images)).argmax(1)  # type: ignore[no-any-return]


def net_outputs(
    net: nn.Module, normalize: Normalize, images: Tensor, autocast: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """The argmax labels [N, H, W] and the contract's confidence (uint8 [N, H, W]) of uint8
    images [N, 3, H, W] on their device."""
    with torch.inference_mode():
        with torch.autocast(images.device.type, autocast, enabled=autocast is not None):
            logits = net(normalize(images))
        return logits.argmax(1), confidence_of(logits)


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
        self.preprocessing: Preprocessing = ckpt.preprocessing
        self.normalize = Normalize(ckpt.preprocessing).to(self.device)
        # The training config it recorded: its loss is the validation loss's (``fcn eval``).
        self.config: dict[str, Any] = ckpt.config
        self.num_classes = ckpt.spec.num_classes
        self.palette: Sequence[Color] = ckpt.palette
        self.classes: list[str] = list(ckpt.classes)
        self.has_confidence = True

    def _batch(self, images: NDArray[np.uint8]) -> Tensor:
        batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a writable copy
        return batch.to(self.device)

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]:
        labels = net_labels(self.net, self.normalize, self._batch(images), self.autocast)
        return encode.as_labels(labels.cpu().numpy(), self.num_classes)

    def predict_with_confidence(
        self, images: NDArray[np.uint8]
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        labels, confidence = net_outputs(
            self.net, self.normalize, self._batch(images), self.autocast
        )
        return encode.as_labels(labels.cpu().numpy(), self.num_classes), confidence.cpu().numpy()

    def __call__(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        return np.asarray(self.predict_batch(image[None])[0])


class OnnxPredictor:
    """An exported schema-1 file on ONNX Runtime (CUDA when asked and present, else CPU) or on
    OpenVINO's CPU plugin, as ``runtime`` and ``precision`` choose (``contract.runtimes``)."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        runtime: str = "auto",
        precision: str = "auto",
    ):
        import onnxruntime as ort

        source = str(path)
        if not Path(path).is_file():
            raise PredictError(f"{source}: no such model file")
        # As the service chooses: CUDA only where its libraries load, so a CPU-only machine
        # gets no ONNX Runtime errors about them.
        cuda = "CUDAExecutionProvider"
        gpu = (
            device != "cpu"
            and cuda in ort.get_available_providers()
            and missing_library(cuda, Path(ort.__file__).parent) is None
        )
        try:
            self.choice = choose(runtime, precision, gpu=gpu)
        except RuntimeChoiceError as exc:
            raise PredictError(f"--{exc.setting} {exc.value}: {exc}") from None
        self._openvino: OpenVinoModel | None = None
        if self.choice.runtime == OPENVINO:
            try:
                self._openvino = OpenVinoModel(path, self.choice.precision, 0)
            except RuntimeError as exc:  # OpenVINO's own errors
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
                raise PredictError(f"{source}: OpenVINO cannot load it ({first})") from exc
            metadata, inputs, outputs = (
                self._openvino.metadata,
                self._openvino.inputs,
                self._openvino.outputs,
            )
        else:
            providers = [cuda, "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
            try:
                self.session = ort.InferenceSession(source, providers=providers)
            except Exception as exc:  # ORT raises its own pybind exception types
                raise PredictError(f"{source}: ONNX Runtime cannot load it ({exc})") from exc
            metadata = self.session.get_modelmeta().custom_metadata_map
            inputs = session_tensors(self.session.get_inputs())
            outputs = session_tensors(self.session.get_outputs())
        # The contract read off the runtime itself, as the service reads it.
        try:
            meta = check_model(metadata, inputs, outputs, source)
        except MetadataError as exc:
            raise PredictError(str(exc)) from exc
        self.palette: Sequence[Color] = meta.palette
        self.tiling = meta.tiling
        self.classes: list[str] = list(meta.classes)
        self.has_confidence = meta.has_confidence
        self.source = source
        self.has_geometry = meta.has_geometry  # a two-head net's second labels

    def outputs(self, images: NDArray[np.uint8], names: Sequence[str]) -> dict[str, NDArray[Any]]:
        """The outputs ``names`` of a [N, H, W, 3] uint8 batch, by name."""
        batch = np.ascontiguousarray(images)
        if self._openvino is not None:
            found = self._openvino.run(batch)
            return {name: found[name] for name in names}
        values = self.session.run(list(names), {INPUT: batch})
        return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}

    def predict_batch(self, images: NDArray[np.uint8]) -> NDArray[Any]:
        return self.outputs(images, [LABELS])[LABELS]

    def predict_with_confidence(
        self, images: NDArray[np.uint8]
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """The file's own ``labels`` and ``confidence``; PredictError when it has none."""
        if not self.has_confidence:
            raise PredictError(no_confidence(self.source))
        found = self.outputs(images, [LABELS, CONFIDENCE])
        return found[LABELS], found[CONFIDENCE]

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
    model: str | Path,
    device: str = "auto",
    amp: str = "none",
    shift_and_stitch: int = 1,
    *,
    runtime: str = "auto",
    precision: str = "auto",
) -> Predictor:
    """A checkpoint (.pt) or an exported ONNX file (.onnx), ready to label images; the one
    place where options a model cannot take are refused (``PredictError`` naming the flag)."""
    if Path(model).suffix.lower() == ONNX_SUFFIX:
        if amp != "none":
            raise PredictError(f"--amp {amp}: an ONNX model runs at its exported precision")
        if shift_and_stitch != 1:
            raise PredictError(
                f"--shift-and-stitch {shift_and_stitch}: {model} is an exported graph; give "
                "the checkpoint (or export it with the option)"
            )
        return OnnxPredictor(model, device, runtime, precision)
    if (runtime, precision) != ("auto", "auto"):
        raise PredictError(
            f"--runtime {runtime} --precision {precision}: {model} is a checkpoint, run by "
            "PyTorch; they choose how an exported .onnx file runs"
        )
    return TorchPredictor(model, device, amp, shift_and_stitch)


def segment(predictor: Predictor, image: NDArray[np.uint8], tiles: TileOptions) -> NDArray[Any]:
    """The labels [H, W] of one image, whole or cut into tiles (one pass each) as ``tiles``
    says."""
    plan = tiles.plan(image.shape[0], image.shape[1], predictor.tiling)
    if plan is None:
        return predictor(image)
    return segment_tiled(image, plan, predictor.predict_batch)


def segment_with_confidence(
    predictor: Predictor, image: NDArray[np.uint8], tiles: TileOptions
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """The labels and confidence [H, W] of one image, whole or cut into tiles as ``tiles``
    says (both maps stitched alike, as the service stitches them)."""
    plan = tiles.plan(image.shape[0], image.shape[1], predictor.tiling)
    if plan is None:
        labels, confidence = predictor.predict_with_confidence(image[None])
        return labels[0], confidence[0]
    labels, confidence = segment_tiled_maps(image, plan, predictor.predict_with_confidence)
    return labels, confidence
