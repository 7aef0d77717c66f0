"""ONNX models for the service tests: hand-built graphs, and sessions on the tiny FCN the
suite's one factory exports (``model_path``, tests/conftest.py).

The export (torch) runs in the test process; the service code under test never imports
torch, which ``test_server.py`` checks in a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from contract.runtimes import ONNXRUNTIME, OPENVINO, openvino_installed
from service.metrics import Metrics
from service.runtime import Runtime
from tests.service import support
from tests.service.support import WIDTH8_METADATA, runtime_of


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``runtimes`` run once per runtime, ``[onnxruntime]`` and ``[openvino]``."""
    if metafunc.definition.get_closest_marker("runtimes"):
        metafunc.parametrize("service_runtime", [ONNXRUNTIME, OPENVINO], indirect=True)


@pytest.fixture(autouse=True)
def service_runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The runtime the test's apps, servers and runtimes use (``support.TEST_RUNTIME``): ONNX
    Runtime at fp32 (or SERVICE_TEST_RUNTIME's), each in turn for tests marked ``runtimes``."""
    name: str = getattr(request, "param", support.DEFAULT_TEST_RUNTIME)
    if name == OPENVINO and not openvino_installed():
        pytest.skip("openvino is not installed")
    monkeypatch.setitem(support.TEST_RUNTIME, "runtime", name)
    return name


@pytest.fixture(scope="session")
def session(model_path: Path) -> ort.InferenceSession:
    """A plain ORT session on the tiny model: the reference the service must match."""
    return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def _failing_graph(metadata: dict[str, str] | None) -> onnx.ModelProto:
    """A schema-1 graph that only runs on images 8 (or 1) pixels wide: labels = max(RGB) // 64.

    Any other width makes ONNX Runtime fail in a broadcasting Add: a real inference error.
    """
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["pixels", "axes"], ["brightest"], keepdims=0),
        helper.make_node("Add", ["brightest", "zeros"], ["checked"]),
        helper.make_node("Div", ["checked", "step"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["classes"]),
        helper.make_node("Cast", ["classes"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "width-8-only",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [3]),
            helper.make_tensor("zeros", TensorProto.FLOAT, [1, 1, 8], [0.0] * 8),
            helper.make_tensor("step", TensorProto.FLOAT, [], [64.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


@pytest.fixture(scope="session")
def failing_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built schema-1 model that fails on every width but 1 and 8."""
    path = tmp_path_factory.mktemp("onnx") / "width8.onnx"
    onnx.save(_failing_graph(WIDTH8_METADATA), path)
    return path


@pytest.fixture
def width8_model(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Writes the width-8 graph with the given ``fcn.*`` metadata; returns its path."""

    def write(metadata: dict[str, str]) -> Path:
        path = tmp_path / "width8-edited.onnx"
        onnx.save(_failing_graph(metadata), path)
        return path

    return write


@pytest.fixture(scope="session")
def unlabelled_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid ONNX graph of the right shape but with no fcn.* metadata."""
    path = tmp_path_factory.mktemp("onnx") / "plain.onnx"
    onnx.save(_failing_graph(None), path)
    return path


@pytest.fixture(scope="session")
def big_image() -> bytes:
    """A 2000x2000 BMP: quick to decode, then 0.1 s or more of inference on two CPU threads."""
    from tests.images import encode, pattern

    return encode(np.tile(pattern(100, 100), (20, 20, 1)), "BMP")


@pytest.fixture(scope="session")
def cuda_works(model_path: Path) -> bool:
    """Whether ONNX Runtime really runs this model on CUDA here."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    probe = ort.InferenceSession(
        model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    return bool(probe.get_providers()[0] == "CUDAExecutionProvider")


@pytest.fixture
def metrics() -> Metrics:
    """A fresh set of the service's metrics, for a batcher built by hand."""
    return Metrics()


@pytest.fixture(scope="module")
def runtime(model_path: Path) -> Runtime:
    """The service's runtime on the tiny model, once per module."""
    return runtime_of(model_path)
