"""Execution providers: their ONNX Runtime options, and why a GPU provider cannot load.

onnxruntime-gpu lists CUDA as available even where it cannot run; only the session's own
``get_providers()`` after creation says where a model runs (``service.runtime``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from contract.providers import missing_library as contract_missing_library

GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


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


def missing_library(provider: str) -> str | None:
    """Why ``provider``'s library cannot load here, else None (``contract.providers``)."""
    return contract_missing_library(provider, Path(ort.__file__).parent)
