"""Loading a model file into a checked ONNX Runtime session: the contract's rules at
start-up, providers, threads and arena memory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from contract.schema import MetadataError, check_model, session_tensors
from contract.tiling import padded_pixels
from service.cpus import available_cpus
from service.errors import StartupError
from service.runtime import load_runtime, session_options
from tests.images import pattern
from tests.service.support import PALETTE


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


def test_sessions_run_one_inference_at_a_time_on_threads_that_sleep() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"


def test_tensors_are_read_as_the_contract_names_them(model_with_scores_path: Path) -> None:
    session = ort.InferenceSession(model_with_scores_path, providers=["CPUExecutionProvider"])
    (image,) = session_tensors(session.get_inputs())
    labels, confidence, scores = session_tensors(session.get_outputs())
    assert (image.name, image.dtype, image.shape) == ("image", "uint8", ("N", "H", "W", 3))
    assert (labels.name, labels.dtype, labels.shape) == ("labels", "uint8", ("N", "H", "W"))
    assert (confidence.name, confidence.dtype, confidence.shape) == (
        "confidence",
        "uint8",
        ("N", "H", "W"),
    )
    assert (scores.name, scores.dtype, len(scores.shape)) == ("scores", "float", 4)


def test_loads_the_exported_model_and_its_metadata(
    model_path: Path, session: ort.InferenceSession
) -> None:
    runtime = load(model_path)
    info, meta = runtime.info, runtime.info.meta
    assert (meta.arch, meta.backbone, meta.width) == ("fcn8s", "vgg16", 1 / 32)
    assert meta.classes == tuple(f"class{i}" for i in range(5))
    assert [list(c) for c in meta.palette] == PALETTE
    assert info.version.startswith("fcn8s-")
    assert info.sha256.startswith(info.version[6:])
    assert meta.preprocessing["name"] == "caffe"
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.threads == available_cpus()
    assert load(model_path, intra_op_threads=1).threads == 1
    image = pattern(20, 30)[None]
    labels, confidence = session.run(["labels", "confidence"], {"image": image})
    outputs = runtime.run(image)
    assert list(outputs) == ["labels", "confidence"]
    np.testing.assert_array_equal(outputs["labels"], labels)
    np.testing.assert_array_equal(outputs["confidence"], confidence)


def test_a_model_with_scores_serves_the_same_labels(
    model_path: Path, model_with_scores_path: Path
) -> None:
    plain, scored = load(model_path), load(model_with_scores_path)
    assert scored.info.meta.outputs == ("labels", "confidence", "scores")
    image = pattern(33, 47)[None]
    outputs = scored.run(image)
    assert list(outputs) == ["labels", "confidence"]  # the scores stay in the session
    assert outputs["labels"].shape == (1, 33, 47)
    np.testing.assert_array_equal(outputs["labels"], plain.run(image)["labels"])


def test_a_model_without_confidence_serves_its_labels_alone(
    model_path: Path, model_without_confidence_path: Path
) -> None:
    runtime = load(model_without_confidence_path)
    assert runtime.info.meta.outputs == ("labels",)
    image = pattern(21, 34)[None]
    outputs = runtime.run(image)
    assert list(outputs) == ["labels"]
    np.testing.assert_array_equal(outputs["labels"], load(model_path).run(image)["labels"])


def test_a_file_of_another_schema_is_refused(model_path: Path, tmp_path: Path) -> None:
    model = onnx.load(model_path)
    for entry in model.metadata_props:
        if entry.key == "fcn.schema":
            entry.value = "2"
    onnx.save(model, tmp_path / "v2.onnx")
    with pytest.raises(StartupError, match=r"v2\.onnx: fcn\.schema is '2', this reader knows '1'"):
        load(tmp_path / "v2.onnx")


def test_a_file_without_metadata_is_refused(unlabelled_model_path: Path) -> None:
    with pytest.raises(StartupError, match="not an FCN model, metadata lacks fcn.schema, "):
        load(unlabelled_model_path)


def test_bad_metadata_is_named(model_path: Path, tmp_path: Path) -> None:
    model = onnx.load(model_path)
    for entry in model.metadata_props:
        if entry.key == "fcn.classes":
            entry.value = "[not json"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(StartupError, match="fcn.classes is not valid JSON"):
        load(tmp_path / "bad.onnx")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("fcn.dataset", None, "metadata lacks fcn.dataset"),
        ("fcn.palette", json.dumps(PALETTE[:2]), "fcn.palette has 2 colours for 5 classes"),
        ("fcn.outputs", json.dumps(["labels", "scores"]), "fcn.outputs says"),
    ],
    ids=["missing-key", "short-palette", "undeclared-output"],
)
def test_the_contracts_refusals_are_the_startup_error(
    key: str, value: str | None, words: str, model_path: Path, tmp_path: Path
) -> None:
    model = onnx.load(model_path)
    props = {p.key: p.value for p in model.metadata_props}
    if value is None:
        del props[key]
    else:
        props[key] = value
    del model.metadata_props[:]
    for name, text in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = name, text
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    try:  # the words of the contract, whole: nothing added, nothing lost
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        check_model(
            props,
            session_tensors(session.get_inputs()),
            session_tensors(session.get_outputs()),
            str(path),
        )
    except MetadataError as exc:
        expected = str(exc)
    assert words in expected
    with pytest.raises(StartupError) as refused:
        load(path)
    assert str(refused.value) == expected


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
    assert runtime.run(pattern(40, 30)[None])["labels"].shape == (1, 40, 30)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.slow
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
