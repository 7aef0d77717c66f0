"""Whether ONNX Runtime's GPU providers can load here: the one rule the service and the
``fcn`` commands choose a provider by, so both run a file where the other would.

onnxruntime-gpu lists CUDA as available even where its libraries cannot load (a machine
without a GPU driver); asking for it there prints ONNX Runtime's own errors and falls back to
the CPU. Loading the provider's library first says why, quietly. Stdlib only: the caller
passes ONNX Runtime's package folder, so this module never imports it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

# The libraries onnxruntime-gpu loads for its GPU providers (Linux names).
PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


def missing_library(provider: str, onnxruntime_dir: Path) -> str | None:
    """Why ``provider``'s library cannot load when a shared library it needs is not found
    (the usual CPU-only machine), else None: then ONNX Runtime's own diagnostics matter.
    ``onnxruntime_dir``: the installed package's folder, ``Path(onnxruntime.__file__).parent``.
    """
    name = PROVIDER_LIBRARIES.get(provider)
    if name is None:
        return None
    path = onnxruntime_dir / "capi" / name
    if not path.is_file():
        return None
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        if "cannot open shared object file" in str(exc):
            return str(exc).removeprefix(f"{path}: ")
    return None
