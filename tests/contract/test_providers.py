"""Whether a GPU provider's library loads (contract.providers): the rule both halves use."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from contract.providers import missing_library

ORT_DIR = Path(ort.__file__).parent


def test_the_cpu_provider_has_no_library_to_miss() -> None:
    assert missing_library("CPUExecutionProvider", ORT_DIR) is None


def test_the_installed_cuda_provider_loads_or_names_what_it_lacks() -> None:
    reason = missing_library("CUDAExecutionProvider", ORT_DIR)
    assert reason is None or "cannot open shared object file" in reason


def test_a_build_without_the_library_or_with_a_broken_one_leaves_it_to_onnx_runtime(
    tmp_path: Path,
) -> None:
    assert missing_library("CUDAExecutionProvider", tmp_path) is None  # a CPU-only build
    (tmp_path / "capi").mkdir()
    (tmp_path / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"not a library")
    assert missing_library("CUDAExecutionProvider", tmp_path) is None  # not a missing one
