"""The ONNX Runtime session: the schema-1 file checked and read, providers placed and verified.

Only ``session.get_providers()`` after creation is trusted: onnxruntime-gpu lists CUDA as
available and quietly falls back to CPU when its libraries or the device are missing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.errors import StartupError
from service.imaging import padded_pixels

logger = logging.getLogger("fcn.service")

SCHEMA = "1"
INPUT = "image"
LABELS = "labels"
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# Mount points of the cgroup v1 cpu controller.
CGROUP_V1_CPU = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
# The libraries onnxruntime-gpu loads for its GPU providers (Linux names).
PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
# ONNX Runtime's default logger severities: 2 warning (its default), 4 fatal.
ORT_WARNING, ORT_FATAL = 2, 4
SHRINK_ARENAS = "memory.enable_memory_arena_shrinkage"


@dataclass(frozen=True)
class ModelInfo:
    """What the ``fcn.*`` metadata says about the model, plus the file's identity."""

    name: str
    version: str
    sha256: str
    arch: str
    backbone: str
    width: float
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    dataset: str
    metrics: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    outputs: tuple[str, ...] = (LABELS,)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata for /v1/model."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "schema": SCHEMA,
            "arch": self.arch,
            "backbone": self.backbone,
            "width": self.width,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "dataset": self.dataset,
            "metrics": self.metrics,
            "preprocessing": self.preprocessing,
            "precision": self.precision,
            "outputs": list(self.outputs),
            "created": self.created,
        }


def read_metadata(meta: dict[str, str], *, source: str, name: str, sha256: str) -> ModelInfo:
    """Check and parse the ``fcn.*`` metadata; the error names the file and the key."""
    schema = meta.get("fcn.schema")
    if schema != SCHEMA:
        found = "no fcn.schema entry" if schema is None else f"fcn.schema {schema!r}"
        raise StartupError(
            f"{source}: not a schema-{SCHEMA} FCN model ({found}); export it with `fcn export`"
        )

    def get(key: str, default: str | None = None) -> str:
        value = meta.get(key, default)
        if value is None:
            raise StartupError(f"{source}: metadata entry {key} is missing")
        return value

    def parse(key: str, default: str | None = None) -> Any:
        text = get(key, default)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StartupError(f"{source}: metadata entry {key} is not JSON ({exc})") from exc

    try:
        classes = tuple(str(c) for c in parse("fcn.classes"))
        palette = tuple((int(c[0]), int(c[1]), int(c[2])) for c in parse("fcn.palette", "[]"))
        arch = get("fcn.arch")
        return ModelInfo(
            name=name,
            version=f"{arch}-{sha256[:12]}",
            sha256=sha256,
            arch=arch,
            backbone=get("fcn.backbone", "vgg16"),
            width=float(get("fcn.width", "1.0")),
            classes=classes,
            palette=palette,
            ignore_index=int(get("fcn.ignore_index", "255")),
            dataset=get("fcn.dataset", ""),
            metrics=dict(parse("fcn.metrics", "{}")),
            preprocessing=dict(parse("fcn.preprocessing", "{}")),
            precision=get("fcn.precision", "fp32"),
            outputs=tuple(str(o) for o in parse("fcn.outputs", json.dumps([LABELS]))),
            created=get("fcn.created", ""),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise StartupError(f"{source}: malformed fcn.* metadata ({exc})") from exc


def _cgroup_dirs(root: Path, self_cgroup: Path) -> list[Path]:
    """This process's cgroup folders for the cpu controller, and their ancestors up to root."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    leaves: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            leaves.append(root / relative)
        elif "cpu" in controllers.split(","):
            leaves.extend(root / mount / relative for mount in CGROUP_V1_CPU)
    if not leaves:
        leaves = [root, *(root / mount for mount in CGROUP_V1_CPU)]
    found: list[Path] = []
    for leaf in leaves:
        for folder in (leaf, *leaf.parents):
            if folder not in found and folder.is_relative_to(root):
                found.append(folder)
    return found


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota."""
    limits: list[float] = []
    for folder in _cgroup_dirs(root, self_cgroup):
        try:
            if (folder / "cpu.max").is_file():
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(int(quota) / int(period))
            elif (folder / "cpu.cfs_quota_us").is_file():
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
                if quota_us > 0:
                    limits.append(quota_us / period_us)
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup quota."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root, self_cgroup)
    if quota is not None:
        # A fractional quota is rounded down: one thread more than the quota is throttled.
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def provider_options(
    providers: Sequence[str],
    *,
    device_id: int,
    gpu_mem_limit_mb: int,
    cudnn_conv_algo_search: str,
    trt_fp16: bool,
    trt_cache_dir: Path | None,
) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime (provider, options) pairs for the requested providers."""
    result: list[tuple[str, dict[str, str]]] = []
    for name in providers:
        options: dict[str, str] = {}
        if name == "CUDAExecutionProvider":
            options = {
                "device_id": str(device_id),
                # EXHAUSTIVE benchmarks every conv for every new input shape (seconds each).
                "cudnn_conv_algo_search": cudnn_conv_algo_search,
                "arena_extend_strategy": "kSameAsRequested",
                "do_copy_in_default_stream": "1",
            }
            if gpu_mem_limit_mb > 0:
                options["gpu_mem_limit"] = str(gpu_mem_limit_mb * 2**20)
        elif name == "TensorrtExecutionProvider":
            options = {"device_id": str(device_id), "trt_fp16_enable": str(trt_fp16)}
            if trt_cache_dir is not None:
                options["trt_engine_cache_enable"] = "True"
                options["trt_engine_cache_path"] = str(trt_cache_dir)
        result.append((name, options))
    return result


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


def _check_contract(session: ort.InferenceSession, source: str) -> str:
    """Verify the graph's input and output against schema 1; returns the labels' type."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    image = inputs.get(INPUT)
    if image is None or image.type != "tensor(uint8)" or len(image.shape) != 4:
        raise StartupError(f"{source}: the graph has no uint8 [N, H, W, 3] input named {INPUT!r}")
    labels = outputs.get(LABELS)
    if labels is None or labels.type not in ("tensor(uint8)", "tensor(int32)"):
        raise StartupError(f"{source}: the graph has no uint8/int32 output named {LABELS!r}")
    return str(labels.type)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Runtime:
    """A loaded model: the ORT session, its metadata and where it runs.

    ONNX Runtime's memory arenas keep their peak for reuse: without them every run pays for
    fresh pages (a third less throughput on CPU, BENCHMARKS.md). Runs up to ``keep_pixels``
    padded pixels keep it; after a larger one, that run and the next give it back.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        info: ModelInfo,
        *,
        requested: Sequence[str],
        threads: int,
        label_type: str,
        device_id: int = 0,
    ):
        self.session = session
        self.info = info
        self.requested = tuple(requested)
        self.providers = tuple(session.get_providers())
        self.provider = self.providers[0]
        self.threads = threads
        self.label_type = label_type
        self.keep_pixels = 0  # 0: every run keeps the arenas' memory
        arenas = ["cpu:0"]
        if "CUDAExecutionProvider" in self.providers:
            arenas.append(f"gpu:{device_id}")
        self._arenas = ";".join(arenas)
        self._shrink_next = False
        self._lock = threading.Lock()
        self._current: ort.RunOptions | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether the first provider in use is a GPU one."""
        return self.provider in GPU_PROVIDERS

    def run(self, image: NDArray[np.uint8]) -> NDArray[Any]:
        """[N, H, W, 3] uint8 RGB -> [N, H, W] labels; blocks, releases the GIL.

        ``terminate()`` from another thread makes it raise at the next node.
        """
        options = ort.RunOptions()
        count, height, width = image.shape[:3]
        oversized = 0 < self.keep_pixels < count * padded_pixels(height, width)
        if oversized or self._shrink_next:
            # The oversized run's output may still sit in the arena as it ends: shrink again
            # after the next run, once that output is gone.
            options.add_run_config_entry(SHRINK_ARENAS, self._arenas)
        self._shrink_next = oversized
        with self._lock:
            self._current = options
        try:
            (labels,) = self.session.run([LABELS], {INPUT: image}, options)
        finally:
            with self._lock:
                self._current = None
        return np.asarray(labels)

    def terminate(self) -> bool:
        """Ask the running inference, if any, to stop at its next node; whether one runs."""
        with self._lock:
            if self._current is None:
                return False
            self._current.terminate = True
            return True

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> float:
        """Run one image of each H x W size; returns the seconds it took."""
        start = time.perf_counter()
        for height, width in sizes:
            self.run(np.zeros((1, height, width, 3), dtype=np.uint8))
        return time.perf_counter() - start


def missing_library(provider: str) -> str | None:
    """Why ``provider``'s library cannot load when a shared library it needs is not found
    (the usual CPU-only machine), else None: then ONNX Runtime's own diagnostics matter."""
    name = PROVIDER_LIBRARIES.get(provider)
    if name is None:
        return None
    path = Path(ort.__file__).parent / "capi" / name
    if not path.is_file():
        return None
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        if "cannot open shared object file" in str(exc):
            return str(exc).removeprefix(f"{path}: ")
    return None


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
) -> Runtime:
    """Load and check ``path``, create its session and verify the provider really in use."""
    source = str(path)
    if not path.is_file():
        raise StartupError(f"{source}: no such model file (set FCN_MODEL_PATH)")
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    missing = [p for p in providers if p not in available]
    if missing:
        logger.warning("this onnxruntime build lacks %s", ", ".join(missing))
    if not usable:
        raise StartupError(f"none of FCN_PROVIDERS={','.join(providers)} is in this onnxruntime")
    threads = intra_op_threads or available_cpus()
    placement = provider_options(
        usable,
        device_id=device_id,
        gpu_mem_limit_mb=gpu_mem_limit_mb,
        cudnn_conv_algo_search=cudnn_conv_algo_search,
        trt_fp16=trt_fp16,
        trt_cache_dir=trt_cache_dir,
    )
    gpus = [p for p in usable if p in GPU_PROVIDERS]
    reasons = [reason for reason in map(missing_library, gpus) if reason is not None]
    # Every GPU provider lacks a library: ONNX Runtime would print its failed loads in red
    # before our own warning, which names the library. Any other GPU trouble it reports.
    quiet = bool(gpus) and len(reasons) == len(gpus)
    if quiet:
        ort.set_default_logger_severity(ORT_FATAL)
    try:
        session = ort.InferenceSession(
            source, sess_options=session_options(threads), providers=placement
        )
    except Exception as exc:  # ORT raises its own pybind exception types
        raise StartupError(f"{source}: ONNX Runtime cannot load it: {exc}") from exc
    finally:
        if quiet:
            ort.set_default_logger_severity(ORT_WARNING)
    meta = session.get_modelmeta().custom_metadata_map
    info = read_metadata(meta, source=source, name=name, sha256=sha256_of(path))
    label_type = _check_contract(session, source)
    runtime = Runtime(
        session,
        info,
        requested=providers,
        threads=threads,
        label_type=label_type,
        device_id=device_id,
    )
    wanted_gpu = any(p in GPU_PROVIDERS for p in providers)
    if wanted_gpu and not runtime.on_gpu:
        why = "; ".join(reasons) or "no usable GPU, or CUDA/cuDNN libraries missing"
        message = (
            f"asked for {', '.join(providers)} but ONNX Runtime runs on {runtime.provider} ({why})"
        )
        if require_gpu:
            raise StartupError(f"FCN_REQUIRE_GPU is set: {message}")
        logger.warning("falling back: %s", message)
    elif require_gpu and not runtime.on_gpu:
        raise StartupError(f"FCN_REQUIRE_GPU is set but FCN_PROVIDERS={','.join(providers)}")
    logger.info(
        "model %s (%s, %d classes, %s) on %s with %d intra-op threads",
        info.name,
        info.version,
        len(info.classes),
        info.precision,
        runtime.provider,
        threads,
    )
    return runtime
