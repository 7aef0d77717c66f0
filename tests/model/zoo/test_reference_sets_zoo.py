"""``fcn pretrained`` for the reference's PASCAL-Context and NYUDv2 colour nets: registry
entries as the reference publishes them, and each net fetched from the loopback server,
converted with its data set's classes and mean, exported and served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.data.classes import CONTEXT_CLASSES, NYUD_CLASSES
from model.export.metadata import read_metadata
from model.zoo.registry import CAFFE_HOST, MODELS
from tests.model.caffe import caffe_writer as cw
from tests.model.zoo.http_server import serving
from tests.model.zoo.test_pretrained import WIDTH, Zoo, png, torch_labels
from tests.service.support import png_labels, serve

CLASSES = {"context": CONTEXT_CLASSES, "nyud": NYUD_CLASSES}
# name: (the reference's folder, whose caffemodel-url names the file; arch; data set).
REFERENCE = {
    "context-fcn32s": ("pascalcontext-fcn32s", "fcn32s", "context"),
    "context-fcn16s": ("pascalcontext-fcn16s", "fcn16s", "context"),
    "context-fcn8s": ("pascalcontext-fcn8s", "fcn8s", "context"),
    "nyud-fcn32s-color": ("nyud-fcn32s-color", "fcn32s", "nyud"),
}


@pytest.fixture
def zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Zoo]:
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as server:
        yield Zoo(server, tmp_path / "cache", tmp_path / "models", capsys)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_entries_name_the_reference_files_data_set_and_all_four_figures(name: str) -> None:
    folder, arch, dataset = REFERENCE[name]
    entry = MODELS[name]
    assert entry.url == f"{CAFFE_HOST}/{folder}-heavy.caffemodel"
    assert (entry.kind, entry.arch, entry.backbone, entry.dataset) == (
        "caffe",
        arch,
        "vgg16",
        dataset,
    )
    assert set(entry.metrics) == {
        "pixel_accuracy",
        "mean_accuracy",
        "mean_iu",
        "frequency_weighted_iu",
    }
    # Each figure a fraction; mean IU never above mean accuracy nor pixel accuracy.
    assert 0 < entry.metrics["mean_iu"] < entry.metrics["mean_accuracy"]
    assert entry.metrics["mean_accuracy"] < entry.metrics["pixel_accuracy"] < 1
    assert ("Table 6" if dataset == "context" else "Table 4") in entry.metrics_on


def test_context_figures_improve_with_each_skip() -> None:
    ious = [MODELS[f"context-fcn{s}"].metrics["mean_iu"] for s in ("32s", "16s", "8s")]
    assert ious == sorted(ious) == [0.318, 0.348, 0.351]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("name", list(REFERENCE))
async def test_each_net_is_fetched_converted_with_its_classes_and_mean_and_served(
    zoo: Zoo, name: str
) -> None:
    folder, arch, dataset = REFERENCE[name]
    classes = CLASSES[dataset]
    weights = zoo.server.root / f"{folder}-heavy.caffemodel"
    cw.write(weights, cw.net(cw.reference_layers(arch, WIDTH, len(classes), seed=5)))
    # --no-verify: the served labels are compared with PyTorch's below.
    status, stdout, stderr = zoo.run(name, "--out", str(zoo.out), "--no-verify")
    assert status == 0, stderr
    figures = MODELS[name].metrics
    assert f"published: mean IU {100 * figures['mean_iu']:.1f}, pixel accuracy" in stdout
    assert zoo.server.served  # fetched from the mirror, not found on disk
    model = zoo.out / f"{name}.onnx"
    meta = read_metadata(model)
    assert (meta.arch, meta.dataset, meta.classes) == (arch, dataset, classes)
    assert meta.metrics == figures
    assert meta.origin["name"] == name

    # Served with the labels of the weights run by PyTorch on the data set's own mean.
    image = np.random.default_rng(3).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)
    expected = torch_labels(weights, image)
    async with serve(model) as client:
        response = await client.post(
            "/segment", content=png(image), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        described = (await client.get("/v1/model")).json()
    assert len(np.unique(expected)) > 1
    assert (png_labels(response.content) == expected).mean() > 0.999
    assert (described["dataset"], described["classes"]) == (dataset, list(classes))
