"""The service on each runtime: what it reports is what runs, a choice that cannot be met stops
the start naming the setting, and OpenVINO's labels are ONNX Runtime's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract.runtimes import OPENVINO, native_bf16, openvino_installed
from contract.schema import LABELS
from service.cli import run
from service.errors import StartupError
from service.main import create_app
from tests.images import pattern
from tests.service.support import metric, metrics, runtime_of, serve, settings

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed")


@pytest.mark.anyio
@pytest.mark.runtimes
async def test_the_runtime_device_and_precision_reported_are_what_runs(
    service_runtime: str, model_path: Path
) -> None:
    expected = {"runtime": service_runtime, "device": "CPU", "precision": "fp32"}
    async with serve(model_path) as client:
        where = (await client.get("/v1/model")).json()["runtime"]
        assert (where["name"], where["device"], where["precision"]) == tuple(expected.values())
        assert where["intra_op_threads"] == 2  # FCN_INTRA_OP_THREADS, as the runtime reports it
        v2 = (await client.get(f"/v2/models/{model_path.stem}")).json()
        assert v2["parameters"] == expected
        text = await metrics(client)
    assert metric(text, "fcn_runtime_info", **expected) == 1


@needs_openvino
@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_bf16_is_reported_as_the_compiled_model_runs_it(model_path: Path) -> None:
    runtime = runtime_of(model_path, runtime="auto", precision="auto")
    assert (runtime.runtime, runtime.precision) == (OPENVINO, "bf16")
    assert runtime.run(np.zeros((1, 9, 13, 3), np.uint8))["labels"].shape == (1, 9, 13)


@pytest.mark.parametrize(
    ("runtime", "precision", "words"),
    [
        ("onnxruntime", "bf16", "FCN_PRECISION=bf16: bf16 runs on OpenVINO only"),
        pytest.param(
            "openvino",
            "bf16",
            "FCN_PRECISION=bf16: this CPU has no native bf16",
            marks=pytest.mark.skipif(
                not openvino_installed() or native_bf16(), reason="needs a CPU without bf16"
            ),
        ),
        pytest.param(
            "openvino",
            "fp32",
            "FCN_RUNTIME=openvino: openvino is not installed",
            marks=pytest.mark.skipif(openvino_installed(), reason="openvino is installed"),
        ),
    ],
)
@pytest.mark.anyio
async def test_a_choice_that_cannot_be_met_stops_the_start_naming_the_setting(
    model_path: Path, runtime: str, precision: str, words: str
) -> None:
    app = create_app(settings(model_path, runtime=runtime, precision=precision))
    with pytest.raises(StartupError) as caught:
        async with app.router.lifespan_context(app):
            pass
    assert str(caught.value).startswith(words)


@pytest.mark.parametrize(("variable", "value"), [("RUNTIME", "tensorrt"), ("PRECISION", "fp8")])
def test_an_unknown_runtime_or_precision_stops_the_start_naming_the_setting(
    model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    monkeypatch.setenv(f"FCN_{variable}", value)
    with pytest.raises(SystemExit) as caught:
        run([])
    assert caught.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"FCN_{variable}: Input should be" in line


@needs_openvino
def test_openvino_fp32_labels_are_onnx_runtimes_but_for_near_ties(
    model_with_scores_path: Path,
) -> None:
    path = model_with_scores_path
    images = np.stack([pattern(61, 83), pattern(61, 83)[::-1], 255 - pattern(61, 83)])
    reference = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected, scores = reference.run([LABELS, "scores"], {"image": images})
    found = runtime_of(path, runtime=OPENVINO).fetch(images, [LABELS, "scores"])
    assert found[LABELS].dtype == expected.dtype
    differ = found[LABELS] != expected
    assert differ.mean() <= 0.001
    # Where they differ, the two labels' scores are a hair apart (float rounding, not math).
    top2 = np.sort(scores, axis=1)[:, -2:]  # [N, 2, H, W]
    gap = (top2[:, 1] - top2[:, 0])[differ]
    scale = np.abs(scores).max()
    assert (gap <= 1e-4 * scale).all(), gap.max()
    assert np.allclose(found["scores"], scores, atol=1e-4 * scale)
