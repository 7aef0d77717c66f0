"""Execution providers: the options each gets, and why a GPU one cannot load."""

from __future__ import annotations

from pathlib import Path

from service.providers import missing_library, provider_options


def test_each_provider_gets_its_options() -> None:
    placement = dict(
        provider_options(
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            device_id=1,
            gpu_mem_limit_mb=2048,
            cudnn_conv_algo_search="HEURISTIC",
            trt_fp16=True,
            trt_cache_dir=Path("/cache"),
        )
    )
    cuda = placement["CUDAExecutionProvider"]
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda["gpu_mem_limit"] == str(2048 * 2**20)
    assert cuda["device_id"] == "1"
    trt = placement["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/cache"
    assert placement["CPUExecutionProvider"] == {}
    unbounded = dict(
        provider_options(
            ["CUDAExecutionProvider"],
            device_id=0,
            gpu_mem_limit_mb=0,
            cudnn_conv_algo_search="EXHAUSTIVE",
            trt_fp16=False,
            trt_cache_dir=None,
        )
    )
    assert "gpu_mem_limit" not in unbounded["CUDAExecutionProvider"]


def test_only_gpu_providers_have_a_library_to_miss() -> None:
    assert missing_library("CPUExecutionProvider") is None
    reason = missing_library("CUDAExecutionProvider")
    assert reason is None or "cannot open shared object file" in reason
