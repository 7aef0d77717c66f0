"""Settings, the CPU budget, and loading a model file into a checked ONNX Runtime session."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.errors import StartupError
from service.imaging import padded_pixels
from service.main import server_options
from service.runtime import (
    available_cpus,
    cgroup_cpu_limit,
    load_runtime,
    provider_options,
    session_options,
)
from tests.service.support import PALETTE, pattern

README = Path(__file__).resolve().parents[2] / "README.md"


def load(path: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    options: dict[str, Any] = {
        "name": path.stem,
        "providers": ["CPUExecutionProvider"],
        "require_gpu": False,
        "device_id": 0,
        "gpu_mem_limit_mb": 1024,
        "cudnn_conv_algo_search": "HEURISTIC",
        "trt_fp16": False,
        "trt_cache_dir": None,
        "intra_op_threads": 0,
    }
    options.update(overrides)
    return load_runtime(path, **options)


def test_settings_come_from_fcn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", "/models/voc.onnx")
    monkeypatch.setenv("FCN_PROVIDERS", "tensorrt, cuda,CPU")
    monkeypatch.setenv("FCN_WARMUP_SIZES", "375x500, 64X48")
    monkeypatch.setenv("FCN_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("FCN_REQUIRE_GPU", "true")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.model_path == Path("/models/voc.onnx")
    assert settings.name == "voc"
    assert settings.providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert settings.warmup_sizes == ((375, 500), (64, 48))
    assert settings.max_batch_size == 16
    assert settings.require_gpu is True
    monkeypatch.setenv("FCN_WARMUP_SIZES", "")
    assert Settings().warmup_sizes == ()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "fault"),
    [
        ("providers", "rocm,cpu", "rocm"),
        ("providers", "", "at least one"),
        ("warmup_sizes", "375", "HxW"),
        ("warmup_sizes", "0x5", "at least 1x1"),
        ("max_batch_size", "-1", "greater than or equal to 0"),
        ("overlay_alpha", "1.5", "less than or equal to 1"),
        ("default_format", "gif", "png"),
    ],
)
def test_bad_settings_are_refused_with_the_value_at_fault(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fault: str
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", "m.onnx")
    monkeypatch.setenv(f"FCN_{name.upper()}", value)
    with pytest.raises(ValidationError, match=re.escape(fault)) as caught:
        Settings()  # type: ignore[call-arg]
    assert name in str(caught.value)


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [
        f"FCN_{name.upper()}"
        for name in Settings.model_fields
        if not re.search(rf"^\| `FCN_{name.upper()}` \|", text, re.MULTILINE)
    ]
    assert not missing, f"README's settings table lacks {missing}"


def test_fcn_serve_keeps_idle_connections_longer_than_load_balancers(model_path: Path) -> None:
    import uvicorn

    options = server_options(Settings(model_path=model_path, keep_alive_s=90, drain_timeout_s=7.5))
    config = uvicorn.Config("service.main:create_app", **options)
    assert config.timeout_keep_alive == 90
    assert config.timeout_graceful_shutdown == 8
    defaults = server_options(Settings(model_path=model_path))
    assert defaults["timeout_keep_alive"] > 60  # AWS ALB's idle timeout


def write_cgroup(root: Path, relative: str, files: dict[str, str]) -> None:
    folder = root / relative
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cgroup_v2_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    write_cgroup(root, "kubepods/pod1/ctr", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    # A parent's quota binds its children too.
    write_cgroup(root, "kubepods/pod1", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert available_cpus(root, proc) == 1
    write_cgroup(root, "kubepods/pod1/ctr", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert available_cpus(root, proc) == 1  # never below one thread


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    files = {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}
    write_cgroup(root, "cpu,cpuacct/docker/abc", files)
    assert cgroup_cpu_limit(root, proc) is None
    files["cpu.cfs_quota_us"] = "300000\n"
    write_cgroup(root, "cpu,cpuacct/docker/abc", files)
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


def test_cpu_count_follows_affinity_not_the_host() -> None:
    import os

    assert available_cpus() <= len(os.sched_getaffinity(0))


def test_provider_options_and_session_options() -> None:
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
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"


def test_loads_the_exported_model_and_its_metadata(
    model_path: Path, session: ort.InferenceSession
) -> None:
    runtime = load(model_path)
    info = runtime.info
    assert (info.arch, info.backbone, info.width) == ("fcn8s", "vgg16", 1 / 32)
    assert info.classes == tuple(f"class{i}" for i in range(5))
    assert [list(c) for c in info.palette] == PALETTE
    assert info.version.startswith("fcn8s-")
    assert info.sha256.startswith(info.version[6:])
    assert info.preprocessing["name"] == "caffe"
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.threads == available_cpus()
    assert load(model_path, intra_op_threads=1).threads == 1
    image = pattern(20, 30)[None]
    np.testing.assert_array_equal(runtime.run(image), session.run(None, {"image": image})[0])


def test_a_model_with_scores_serves_the_same_labels(
    model_path: Path, model_with_scores_path: Path
) -> None:
    plain, scored = load(model_path), load(model_with_scores_path)
    assert scored.info.outputs == ("labels", "scores")
    image = pattern(33, 47)[None]
    labels = scored.run(image)
    assert labels.shape == (1, 33, 47)
    np.testing.assert_array_equal(labels, plain.run(image))


def test_a_file_of_another_schema_is_refused(model_path: Path, tmp_path: Path) -> None:
    model = onnx.load(model_path)
    for entry in model.metadata_props:
        if entry.key == "fcn.schema":
            entry.value = "2"
    onnx.save(model, tmp_path / "v2.onnx")
    with pytest.raises(
        StartupError, match=r"v2\.onnx: not a schema-1 FCN model \(fcn\.schema '2'\)"
    ):
        load(tmp_path / "v2.onnx")


def test_a_file_without_metadata_is_refused(unlabelled_model_path: Path) -> None:
    with pytest.raises(StartupError, match="no fcn.schema entry"):
        load(unlabelled_model_path)


def test_bad_metadata_is_named(model_path: Path, tmp_path: Path) -> None:
    model = onnx.load(model_path)
    for entry in model.metadata_props:
        if entry.key == "fcn.classes":
            entry.value = "[not json"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(StartupError, match="fcn.classes is not JSON"):
        load(tmp_path / "bad.onnx")


def test_missing_and_non_onnx_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no such model file"):
        load(tmp_path / "absent.onnx")
    (tmp_path / "weights.onnx").write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(StartupError, match="weights.onnx: ONNX Runtime cannot load it"):
        load(tmp_path / "weights.onnx")


def test_gpu_fallback_is_reported_and_require_gpu_refuses_it(
    model_path: Path, cuda_works: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if cuda_works:
        pytest.skip("a CUDA device works here: there is no fallback to see")
    gpu_first = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="fcn.service"):
        runtime = load(model_path, providers=gpu_first)
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.requested == tuple(gpu_first)
    assert "runs on CPUExecutionProvider" in caplog.text
    with pytest.raises(
        StartupError, match="FCN_REQUIRE_GPU is set: .* runs on CPUExecutionProvider"
    ):
        load(model_path, providers=gpu_first, require_gpu=True)
    with pytest.raises(StartupError, match="FCN_REQUIRE_GPU is set"):
        load(model_path, require_gpu=True)  # CPU only asked for


@pytest.mark.gpu
def test_require_gpu_runs_on_cuda_when_there_is_one(model_path: Path, cuda_works: bool) -> None:
    if not cuda_works:
        pytest.skip("no usable CUDA device")
    runtime = load(
        model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], require_gpu=True
    )
    assert runtime.provider == "CUDAExecutionProvider"
    assert runtime.run(pattern(40, 30)[None]).shape == (1, 40, 30)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_the_memory_of_a_large_image_is_given_back(model_path: Path) -> None:
    runtime = load(model_path, intra_op_threads=2)
    small = np.zeros((1, 16, 16, 3), np.uint8)
    runtime.keep_pixels = 4 * padded_pixels(16, 16)
    runtime.run(small)
    before = rss_mib()
    # About 0.5 GB of activations at this width, kept by ONNX Runtime's arena for reuse...
    runtime.run(np.zeros((1, 2000, 2000, 3), np.uint8))
    # ...until the next run gives it back.
    runtime.run(small)
    assert rss_mib() - before < 150


def test_metadata_travels_as_json(model_path: Path) -> None:
    info = load(model_path).info.to_dict()
    assert json.loads(json.dumps(info)) == info
    assert info["schema"] == "1"
