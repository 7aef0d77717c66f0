"""The loaded model: the file checked by ``contract.schema`` and opened on ONNX Runtime (on the
providers asked for, the one really in use verified) or on OpenVINO's CPU plugin at a precision.

Only ``session.get_providers()`` after creation is trusted: onnxruntime-gpu lists CUDA as
available and quietly falls back to CPU when its libraries or the device are missing; likewise
OpenVINO's precision is read back from the compiled model, not taken from the request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from contract.runtimes import (
    ONNXRUNTIME,
    OPENVINO,
    OPENVINO_DEVICE,
    OpenVinoModel,
    RuntimeChoiceError,
    choose,
)
from contract.schema import (
    CONFIDENCE,
    GEOMETRY,
    INPUT,
    LABELS,
    MetadataError,
    ModelMetadata,
    TensorSpec,
    check_model,
    session_tensors,
)
from contract.tiling import padded_pixels
from service.cpus import available_cpus
from service.errors import StartupError
from service.providers import GPU_PROVIDERS, missing_library, provider_options

logger = logging.getLogger("fcn.service")

# ONNX Runtime's default logger severities: 2 warning (its default), 4 fatal.
ORT_WARNING, ORT_FATAL = 2, 4
SHRINK_ARENAS = "memory.enable_memory_arena_shrinkage"


@dataclass(frozen=True)
class ModelInfo:
    """The file's identity and what its ``fcn.*`` metadata says about the model."""

    name: str
    version: str
    sha256: str
    meta: ModelMetadata

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready identity and metadata for /v1/model."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            **self.meta.to_dict(),
        }


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def session_options(threads: int) -> ort.SessionOptions:
    """One inference at a time on ``threads`` intra-op threads that sleep when idle."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would burn the cores that decoding and HTTP need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Threads claim shrinking blocks of work, so one preempted by decoding or encoding does
    # not hold up the others (ONNX Runtime's advice for preempted threads: 4).
    options.add_session_config_entry("session.dynamic_block_base", "4")
    return options


class OrtEngine:
    """An ONNX Runtime session run one batch at a time, its arenas kept or given back.

    ONNX Runtime's memory arenas keep their peak for reuse: without them every run pays for
    fresh pages (a third less throughput on CPU, BENCHMARKS.md). Runs up to ``keep_pixels``
    padded pixels keep it. Larger runs in a row (the tiles of a large image) keep it between
    them, since each needs it again; the two runs after them give it back.
    """

    def __init__(self, session: ort.InferenceSession, device_id: int = 0):
        self.session = session
        self.keep_pixels = 0  # 0: every run keeps the arenas' memory
        arenas = ["cpu:0"]
        if "CUDAExecutionProvider" in session.get_providers():
            arenas.append(f"gpu:{device_id}")
        self._arenas = ";".join(arenas)
        self._shrinks_due = 0  # runs that give the arenas' memory back, after large ones
        self._lock = threading.Lock()
        self._current: ort.RunOptions | None = None

    def run(self, image: NDArray[np.uint8], names: Sequence[str]) -> dict[str, NDArray[Any]]:
        """The outputs ``names`` of a [N, H, W, 3] uint8 batch, by name."""
        options = ort.RunOptions()
        count, height, width = image.shape[:3]
        oversized = 0 < self.keep_pixels < count * padded_pixels(height, width)
        if oversized:
            self._shrinks_due = 2
        elif self._shrinks_due:
            # Twice: the last large run's output may still sit in the arena as the first ends.
            options.add_run_config_entry(SHRINK_ARENAS, self._arenas)
            self._shrinks_due -= 1
        with self._lock:
            self._current = options
        try:
            values = self.session.run(list(names), {INPUT: image}, options)
        finally:
            with self._lock:
                self._current = None
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def cancel(self) -> bool:
        """Ask the running inference, if any, to stop at its next node; whether one runs."""
        with self._lock:
            if self._current is None:
                return False
            self._current.terminate = True
            return True


class Runtime:
    """A loaded model: its engine (ONNX Runtime or OpenVINO), metadata and where it runs.

    ``runtime``, ``device`` and ``precision`` are what really runs, as the engine reports it.
    """

    def __init__(
        self,
        engine: OrtEngine | OpenVinoModel,
        info: ModelInfo,
        *,
        requested: Sequence[str],
        threads: int,
        label_type: str,
        precision: str,
    ):
        self.engine = engine
        self.info = info
        self.requested = tuple(requested)
        if isinstance(engine, OrtEngine):
            self.runtime = ONNXRUNTIME
            self.providers = tuple(engine.session.get_providers())
            self.provider = self.providers[0]
            self.device = "GPU" if self.provider in GPU_PROVIDERS else "CPU"
        else:
            self.runtime = OPENVINO
            self.providers = (f"OpenVINO {OPENVINO_DEVICE}",)
            self.provider = self.providers[0]
            self.device = OPENVINO_DEVICE
        self.precision = precision
        self.threads = threads
        self.label_type = label_type  # ONNX Runtime's name: tensor(uint8) or tensor(int32)
        # What each run returns: labels, and confidence and a two-head file's geometry when
        # the file has them (a request of any may share the batch; the graph computes them
        # whether fetched or not, so fetching one costs a copy of H x W bytes).
        self.outputs: tuple[str, ...] = (
            LABELS,
            *((CONFIDENCE,) if info.meta.has_confidence else ()),
            *((GEOMETRY,) if info.meta.has_geometry else ()),
        )

    @property
    def keep_pixels(self) -> int:
        """Padded pixels of the largest run that keeps ONNX Runtime's arenas (0: every run)."""
        return self.engine.keep_pixels if isinstance(self.engine, OrtEngine) else 0

    @keep_pixels.setter
    def keep_pixels(self, pixels: int) -> None:
        # OpenVINO's CPU plugin keeps its buffers per shape itself: nothing to give back.
        if isinstance(self.engine, OrtEngine):
            self.engine.keep_pixels = pixels

    @property
    def on_gpu(self) -> bool:
        """Whether the first provider in use is a GPU one."""
        return self.provider in GPU_PROVIDERS

    def fetch(self, image: NDArray[np.uint8], names: Sequence[str]) -> dict[str, NDArray[Any]]:
        """The outputs ``names`` of [N, H, W, 3] uint8 RGB, by name; blocks, releases the GIL."""
        if isinstance(self.engine, OrtEngine):
            return self.engine.run(image, names)
        found = self.engine.run(image)
        return {name: found[name] for name in names}

    def run(self, image: NDArray[np.uint8]) -> dict[str, NDArray[Any]]:
        """[N, H, W, 3] uint8 RGB -> the per-pixel ``outputs`` by name, each [N, H, W];
        blocks, releases the GIL.

        ``terminate()`` from another thread makes it raise.
        """
        return self.fetch(image, self.outputs)

    def terminate(self) -> bool:
        """Ask the running inference, if any, to stop; whether one runs."""
        return self.engine.cancel()

    def describe(self) -> str:
        """Where it runs, for the start-up log: runtime, device or provider, precision."""
        where = self.provider if self.runtime == ONNXRUNTIME else self.device
        return f"{self.runtime} {where} {self.precision}"

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> float:
        """Run one image of each H x W size; returns the seconds it took."""
        start = time.perf_counter()
        for height, width in sizes:
            self.run(np.zeros((1, height, width, 3), dtype=np.uint8))
        return time.perf_counter() - start


def _session(
    source: str, threads: int, placement: list[tuple[str, dict[str, str]]], quiet: bool
) -> ort.InferenceSession:
    """The ORT session of ``source``; ``quiet`` holds back ONNX Runtime's own load errors."""
    if quiet:
        ort.set_default_logger_severity(ORT_FATAL)
    try:
        return ort.InferenceSession(
            source, sess_options=session_options(threads), providers=placement
        )
    except Exception as exc:  # ORT raises its own pybind exception types
        raise StartupError(f"{source}: ONNX Runtime cannot load it: {exc}") from exc
    finally:
        if quiet:
            ort.set_default_logger_severity(ORT_WARNING)


def _checked(
    path: Path,
    name: str,
    metadata: dict[str, str],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> tuple[ModelInfo, str]:
    """The file's identity and metadata, and its labels' type, by the contract's rules."""
    source = str(path)
    try:
        # The same rules and words as `fcn verify-onnx`: nothing is added to the message.
        meta = check_model(metadata, inputs, outputs, source=source)
    except MetadataError as exc:
        raise StartupError(str(exc)) from exc
    sha256 = sha256_of(path)
    (label_type,) = [f"tensor({o.dtype})" for o in outputs if o.name == LABELS]
    return ModelInfo(name, f"{meta.arch}-{sha256[:12]}", sha256, meta), label_type


def _openvino(path: Path, name: str, precision: str, threads: int) -> Runtime:
    """The file compiled by OpenVINO for the CPU at ``precision``."""
    try:
        model = OpenVinoModel(path, precision, threads)
    except RuntimeError as exc:  # OpenVINO's own errors, one per line of its log
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"{path}: OpenVINO cannot load it: {reason}") from exc
    info, label_type = _checked(path, name, model.metadata, model.inputs, model.outputs)
    return Runtime(
        model,
        info,
        requested=(OPENVINO,),
        threads=model.threads,
        label_type=label_type,
        precision=model.precision,
    )


def load_runtime(
    path: Path,
    *,
    name: str,
    providers: Sequence[str],
    require_gpu: bool,
    device_id: int,
    gpu_mem_limit_mb: int,
    cudnn_conv_algo_search: str,
    trt_fp16: bool,
    trt_cache_dir: Path | None,
    intra_op_threads: int,
    runtime: str = ONNXRUNTIME,
    precision: str = "fp32",
) -> Runtime:
    """Load and check ``path`` on the runtime and precision chosen by ``contract.runtimes``
    (``auto``: OpenVINO on the CPU where installed), and verify what really runs."""
    source = str(path)
    if not path.is_file():
        raise StartupError(f"{source}: no such model file (set FCN_MODEL_PATH)")
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    missing = [p for p in providers if p not in available]
    gpus = [p for p in usable if p in GPU_PROVIDERS]
    reasons = [reason for reason in map(missing_library, gpus) if reason is not None]
    try:
        # A GPU is used where a GPU provider's libraries load; one required is tried (on ONNX
        # Runtime) so that its failure names what is missing.
        choice = choose(runtime, precision, gpu=require_gpu or len(reasons) < len(gpus))
    except RuntimeChoiceError as exc:
        raise StartupError(f"FCN_{exc.setting.upper()}={exc.value}: {exc}") from None
    threads = intra_op_threads or available_cpus()
    if choice.runtime == OPENVINO:
        if require_gpu:
            raise StartupError(f"FCN_REQUIRE_GPU is set but FCN_RUNTIME={runtime} runs on the CPU")
        loaded = _openvino(path, name, choice.precision, threads)
        _log(loaded)
        return loaded
    if missing:
        logger.warning("this onnxruntime build lacks %s", ", ".join(missing))
    if not usable:
        raise StartupError(f"none of FCN_PROVIDERS={','.join(providers)} is in this onnxruntime")
    placement = provider_options(
        usable,
        device_id=device_id,
        gpu_mem_limit_mb=gpu_mem_limit_mb,
        cudnn_conv_algo_search=cudnn_conv_algo_search,
        trt_fp16=trt_fp16,
        trt_cache_dir=trt_cache_dir,
    )
    # Every GPU provider lacks a library: ONNX Runtime would print its failed loads in red
    # before our own warning, which names the library. Any other GPU trouble it reports.
    session = _session(source, threads, placement, quiet=bool(gpus) and len(reasons) == len(gpus))
    info, label_type = _checked(
        path,
        name,
        session.get_modelmeta().custom_metadata_map,
        session_tensors(session.get_inputs()),
        session_tensors(session.get_outputs()),
    )
    provider = session.get_providers()[0]
    fp16 = provider == "TensorrtExecutionProvider" and trt_fp16
    loaded = Runtime(
        OrtEngine(session, device_id),
        info,
        requested=providers,
        threads=threads,
        label_type=label_type,
        precision="fp16" if fp16 else info.meta.precision,
    )
    wanted_gpu = any(p in GPU_PROVIDERS for p in providers)
    if wanted_gpu and not loaded.on_gpu:
        why = "; ".join(reasons) or "no usable GPU, or CUDA/cuDNN libraries missing"
        message = (
            f"asked for {', '.join(providers)} but ONNX Runtime runs on {loaded.provider} ({why})"
        )
        if require_gpu:
            raise StartupError(f"FCN_REQUIRE_GPU is set: {message}")
        logger.warning("falling back: %s", message)
    elif require_gpu and not loaded.on_gpu:
        raise StartupError(f"FCN_REQUIRE_GPU is set but FCN_PROVIDERS={','.join(providers)}")
    _log(loaded)
    return loaded


def _log(runtime: Runtime) -> None:
    """The start-up line: the model, and the runtime, device and precision really in use."""
    info = runtime.info
    logger.info(
        "model %s (%s, %d classes, %s file) on %s with %d threads",
        info.name,
        info.version,
        info.meta.num_classes,
        info.meta.precision,
        runtime.describe(),
        runtime.threads,
    )
