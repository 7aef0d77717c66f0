"""``fcn pretrained`` for the reference's SIFT Flow nets: registry entries with the paper's
Table 5 figures where it gives them, and a two-head net fetched from the loopback server,
converted, exported with its geometric head as the ``geometry`` output (verified against
PyTorch), and served."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.caffe.convert import convert_caffemodel
from model.data.classes import SIFTFLOW_CLASSES
from model.export.metadata import read_metadata
from model.export.verify import verify_onnx
from model.nets.preprocessing import Normalize
from model.zoo.registry import CAFFE_HOST, MODELS
from tests.model.caffe import caffe_writer as cw
from tests.model.zoo.http_server import serving
from tests.model.zoo.test_pretrained import WIDTH, Zoo, png
from tests.service.support import png_labels, serve

ARCHS = ("fcn32s", "fcn16s", "fcn8s")


@pytest.fixture
def zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Zoo]:
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as server:
        yield Zoo(server, tmp_path / "cache", tmp_path / "models", capsys)


@pytest.mark.parametrize("arch", ARCHS)
def test_entries_name_the_reference_files_and_only_the_published_figures(arch: str) -> None:
    entry = MODELS[f"siftflow-{arch}"]
    # siftflow-fcn*/caffemodel-url in the reference repository.
    assert entry.url == f"{CAFFE_HOST}/siftflow-{arch}-heavy.caffemodel"
    assert (entry.kind, entry.arch, entry.backbone, entry.dataset) == (
        "caffe",
        arch,
        "vgg16",
        "siftflow",
    )
    if arch != "fcn16s":  # Table 5 has an FCN-16s row only
        assert entry.metrics == {}
        assert "no figure published" in entry.metrics_on
        return
    assert entry.metrics == {
        "mean_iu": 0.395,
        "pixel_accuracy": 0.852,
        "mean_accuracy": 0.517,
        "frequency_weighted_iu": 0.761,
        "geometric_accuracy": 0.943,
    }
    assert "Table 5" in entry.metrics_on


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("arch", ARCHS)
async def test_each_sift_flow_net_is_fetched_converted_exported_with_geometry_and_served(
    zoo: Zoo, arch: str
) -> None:
    name = f"siftflow-{arch}"
    weights = zoo.server.root / f"{name}-heavy.caffemodel"
    layers = cw.reference_layers(arch, WIDTH, len(SIFTFLOW_CLASSES), seed=5, geometry_classes=3)
    cw.write(weights, cw.net(layers))
    # --no-verify: verified below, once as made and once against another geometric head.
    args = (name, "--out", str(zoo.out), "--no-verify")
    status, stdout, stderr = zoo.run(*args)
    assert status == 0, stderr
    if arch == "fcn16s":  # the one row of Table 5
        assert "geom. acc. 94.3 on SIFT Flow test (200 images)" in stdout
    assert zoo.server.served  # fetched from the mirror, not found on disk
    model = zoo.out / f"{name}.onnx"
    meta = read_metadata(model)  # the contract's checks, the geometry output's included
    assert (meta.arch, meta.dataset, meta.classes) == (arch, "siftflow", SIFTFLOW_CLASSES)
    assert meta.outputs == ("labels", "confidence", "geometry")
    assert meta.metrics == MODELS[name].metrics

    # Both outputs are those of the weights run by PyTorch on SIFT Flow's mean.
    image = np.random.default_rng(3).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)
    checkpoint = convert_caffemodel(weights)
    net = checkpoint.build_model().eval()
    x = Normalize(checkpoint.preprocessing)(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.no_grad():
        expected, expected_geometry = (t[0].argmax(0).numpy() for t in net(x, geometry=True))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    _, geometry = session.run(["labels", "geometry"], {"image": image[None]})
    assert geometry.dtype == np.uint8
    assert len(np.unique(expected_geometry)) > 1
    assert (geometry[0] == expected_geometry).mean() > 0.999
    async with serve(model) as client:
        response = await client.post(
            "/segment", content=png(image), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        described = (await client.get("/v1/model")).json()
    assert len(np.unique(expected)) > 1
    assert (png_labels(response.content) == expected).mean() > 0.999
    assert (described["dataset"], described["classes"]) == ("siftflow", list(SIFTFLOW_CLASSES))
    assert described["geometry_classes"] == ["sky", "horizontal", "vertical"]

    # The verifier holds the geometry output to PyTorch's geometric head: it passes the file
    # against its own weights and names the geometry labels alone against other ones.
    assert verify_onnx(model, checkpoint, cases=[(1, 45, 60)]).passed
    state = dict(checkpoint.state_dict)
    state["score_fr_geo.weight"] = -state["score_fr_geo.weight"]
    other = dataclasses.replace(checkpoint, state_dict=state)
    report = verify_onnx(model, other, cases=[(1, 45, 60)])
    assert [f for f in report.failures if "agree" in f] == [report.failures[-1]]
    assert report.failures[-1].startswith("geometry labels agree on")
    assert report.agreement >= 0.9999  # the semantic labels still agree
