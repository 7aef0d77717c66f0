"""The runtimes an exported file runs on: ONNX Runtime or OpenVINO at a precision, chosen by the
one rule both halves share (``choose``), and the file opened on OpenVINO (``OpenVinoModel``).

ONNX Runtime sessions are opened by each half with its own options (``contract`` never imports
onnxruntime); ``openvino`` is imported lazily, so everything works where it is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from contract.schema import INPUT, TensorSpec

ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
RUNTIMES = ("auto", ONNXRUNTIME, OPENVINO)
PRECISIONS = ("auto", "fp32", "bf16")
Setting = Literal["runtime", "precision"]
OPENVINO_DEVICE = "CPU"
# OpenVINO's element type names -> the contract's (ONNX Runtime's) tensor type names.
OV_TYPES = {"u8": "uint8", "i32": "int32", "i64": "int64", "f32": "float", "f16": "float16"}
INSTALL_HINT = "pip install 'fcn-segmentation[openvino]'"


class RuntimeChoiceError(ValueError):
    """A runtime or precision that cannot be met here; ``setting`` names which one."""

    def __init__(self, setting: Setting, value: str, reason: str):
        super().__init__(reason)
        self.setting, self.value = setting, value


@dataclass(frozen=True)
class Choice:
    """What runs a file: ``onnxruntime`` or ``openvino``, at ``fp32`` or ``bf16``."""

    runtime: str
    precision: str


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported here."""
    return importlib.util.find_spec(OPENVINO) is not None


@functools.cache
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, kept for its whole life.

    A Core swaps the signal stack of the thread that makes it for its own and puts the old one
    back when it is destroyed; two Cores destroyed out of order leave the thread on freed
    memory, and the next signal handled there (Ctrl-C, a DataLoader worker's SIGCHLD) kills
    the process with SIGSEGV. One Core that is never destroyed cannot do that.
    """
    import openvino as ov

    return ov.Core()


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (AVX-512 BF16 or AMX), as it says."""
    if not openvino_installed():
        return False
    capabilities = openvino_core().get_property(OPENVINO_DEVICE, "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def choose(runtime: str, precision: str, *, gpu: bool) -> Choice:
    """The runtime and precision that run a file, by one rule: ``auto`` is ONNX Runtime where a
    GPU is used (``gpu``), OpenVINO on the CPU where installed, else ONNX Runtime; precision
    ``auto`` is bf16 where OpenVINO runs on a CPU with native bf16, else fp32. A choice that
    cannot be met raises ``RuntimeChoiceError`` with a one-line reason."""
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError("runtime", runtime, f"not one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise RuntimeChoiceError("precision", precision, f"not one of {', '.join(PRECISIONS)}")
    installed = openvino_installed()
    if runtime == "auto":
        runtime = OPENVINO if installed and not gpu else ONNXRUNTIME
    if runtime == OPENVINO and not installed:
        raise RuntimeChoiceError("runtime", runtime, f"openvino is not installed ({INSTALL_HINT})")
    if precision == "bf16" and runtime != OPENVINO:
        raise RuntimeChoiceError("precision", precision, "bf16 runs on OpenVINO only")
    if precision == "bf16" and not native_bf16():
        raise RuntimeChoiceError(
            "precision", precision, "this CPU has no native bf16 (no AVX-512 BF16 or AMX)"
        )
    if precision == "auto":
        precision = "bf16" if runtime == OPENVINO and native_bf16() else "fp32"
    return Choice(runtime, precision)


def _spec(port: Any) -> TensorSpec:
    """An OpenVINO input or output as the contract sees it: dynamic dimensions are None."""
    dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    kind = port.get_element_type().get_type_name()
    return TensorSpec(port.get_any_name(), OV_TYPES.get(kind, kind), dims)


class OpenVinoModel:
    """A schema-1 file compiled by OpenVINO for the CPU at ``precision``, on ``threads``
    threads in one stream (one batch at a time, all threads on it, as ONNX Runtime runs).

    ``precision`` afterwards is what the compiled model really uses, read back from it.
    Raises ``RuntimeError`` (OpenVINO's) when it cannot read or compile the file.
    """

    def __init__(self, path: str | Path, precision: str, threads: int):
        import openvino as ov
        import openvino.properties.hint as hints

        core = openvino_core()
        model = core.read_model(str(path))
        # The ONNX frontend keeps metadata_props in the model's "framework" rt_info.
        framework = model.get_rt_info()["framework"] if model.has_rt_info("framework") else {}
        self.metadata: dict[str, str] = {k: v.astype(str) for k, v in framework.items()}
        self.inputs = [_spec(port) for port in model.inputs]
        self.outputs = [_spec(port) for port in model.outputs]
        config = {
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
        }
        self._compile = functools.partial(self._compiled, core, model, config)
        self._compile()
        used = self.compiled.get_property(hints.inference_precision)
        self.precision = {"bf16": "bf16", "f16": "fp16"}.get(used.get_type_name(), "fp32")
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._lock = threading.Lock()
        self._running = False

    def _compiled(self, core: Any, model: Any, config: dict[Any, Any]) -> None:
        """Compile ``model`` for the CPU and make its one inference request."""
        self.compiled = core.compile_model(model, OPENVINO_DEVICE, config)
        self._request = self.compiled.create_infer_request()

    def run(self, image: NDArray[np.uint8]) -> dict[str, NDArray[Any]]:
        """Every output of the file by name for a [N, H, W, 3] uint8 batch; one at a time.

        Started, then waited for: a ``cancel()`` from another thread once it is started makes
        it raise (OpenVINO's "Infer Request was canceled").
        """
        with self._lock:
            self._request.start_async({INPUT: np.ascontiguousarray(image)})
            self._running = True
        try:
            self._request.wait()
        except RuntimeError:
            # A run stopped half-way leaves the compiled model's shared buffers with stale
            # shapes (OpenVINO 2026.4: the next run at another size fails in shape
            # inference), so it is compiled afresh before the error goes on.
            self._compile()
            raise
        finally:
            with self._lock:
                self._running = False
        # Copies: the request's output tensors are reused by its next run.
        return {port.get_any_name(): np.array(v) for port, v in self._request.results.items()}

    def cancel(self) -> bool:
        """Ask the running inference, if any, to stop; whether one runs."""
        with self._lock:
            if not self._running:
                return False
            self._request.cancel()
            return True
