"""``fcn pretrained`` against a real HTTP server on 127.0.0.1 standing in for the publishers:
reference-layout Caffe files and torchvision-style ``.pth`` files with random weights, each
digest injected on the command line where the published one cannot match them."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.models import get_model_weights

from contract.palette import VOC_CLASSES
from model.caffe.convert import convert_caffemodel
from model.cli import main
from model.evaluation.predictors import net_labels
from model.export.metadata import read_metadata
from model.nets.preprocessing import Normalize
from model.zoo.registry import MODELS
from tests.model.caffe import caffe_writer as cw
from tests.model.export.test_torchvision_fcn import (
    published_like,
    random_fcn_resnet50,
    torchvision_labels,
)
from tests.model.zoo.http_server import Server, serving
from tests.service.support import png_labels, serve

CAFFE_FILE = "fcn8s-heavy-pascal.caffemodel"
WIDTH = 1 / 32  # conv1_1 has 2 channels: a file of a few MiB in the reference layout


@dataclass
class Zoo:
    """A loopback publisher, a cache and an output folder, and ``fcn pretrained`` on them."""

    server: Server
    cache: Path
    out: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> tuple[int, str, str]:
        """``fcn pretrained ARGS`` on the loopback mirror: (exit status, stdout, stderr)."""
        argv = ["pretrained", *args, "--cache", str(self.cache), "--mirror", self.server.url("")]
        status = main(argv)
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err

    def publish(self, name: str = CAFFE_FILE, arch: str = "fcn8s") -> str:
        """A narrow reference-layout file of ``arch`` on the server as ``name``; its SHA1."""
        return write_reference(self.server.root / name, arch)


@pytest.fixture
def zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Zoo]:
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as server:
        yield Zoo(server, tmp_path / "cache", tmp_path / "models", capsys)


def write_reference(path: Path, arch: str = "fcn8s", width: float = WIDTH, seed: int = 0) -> str:
    """A random-weight reference-layout ``.caffemodel`` at ``path``; its SHA1."""
    cw.write(path, cw.net(cw.reference_layers(arch, width, seed=seed)))
    return sha1(path)


def torch_labels(weights: Path, image: np.ndarray) -> np.ndarray:
    """The labels PyTorch gives ``image`` with the weights of a ``.caffemodel``."""
    checkpoint = convert_caffemodel(weights)
    net = checkpoint.build_model().eval()
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    return net_labels(net, Normalize(checkpoint.preprocessing), batch)[0].numpy()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_full_size_reference_file_is_fetched_converted_exported_and_served(
    zoo: Zoo,
) -> None:
    weights = zoo.server.root / CAFFE_FILE
    digest = write_reference(weights, width=1.0, seed=3)
    assert weights.stat().st_size > 500 * 2**20  # the reference's 513 MiB layout
    status, stdout, stderr = zoo.run("voc-fcn8s", "--out", str(zoo.out), "--sha1", digest)
    assert status == 0, stderr
    model = zoo.out / "voc-fcn8s.onnx"
    assert listing(zoo.out) == ["voc-fcn8s.onnx"]  # no temporary file left beside it
    assert listing(zoo.cache) == [CAFFE_FILE]
    assert f"SHA1 {digest} ok" in stdout
    assert "published: mean IU 65.5 on PASCAL VOC 2011 seg11valid" in stdout

    meta = read_metadata(model)
    assert (meta.arch, meta.backbone, meta.width, meta.dataset) == ("fcn8s", "vgg16", 1.0, "voc")
    assert meta.classes == VOC_CLASSES
    assert meta.metrics == {"mean_iu": 0.655}
    assert meta.origin["name"] == "voc-fcn8s"
    assert meta.origin["url"] == zoo.server.url(CAFFE_FILE)
    assert meta.origin["sha1"] == digest
    assert meta.origin["checked"] == f"SHA1 {digest}"

    # The service answers with the labels of the reference weights run by PyTorch.
    image = np.random.default_rng(0).integers(0, 256, size=(61, 83, 3), dtype=np.uint8)
    expected = torch_labels(weights, image)
    async with serve(model) as client:
        response = await client.post(
            "/segment", content=png(image), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        described = (await client.get("/v1/model")).json()
    labels = png_labels(response.content)
    assert labels.shape == (61, 83)
    assert len(np.unique(expected)) > 1  # not one constant class
    assert (labels == expected).mean() > 0.999
    assert described["origin"]["name"] == "voc-fcn8s"

    # Again: the file is up to date, nothing is fetched.
    served = len(zoo.server.served)
    status, stdout, _ = zoo.run("voc-fcn8s", "--out", str(zoo.out))
    assert status == 0
    assert "is up to date" in stdout
    assert len(zoo.server.served) == served


@pytest.mark.slow
def test_a_second_call_keeps_the_model_or_remakes_it_from_the_cache_offline(zoo: Zoo) -> None:
    digest = zoo.publish()
    args = ("voc-fcn8s", "--out", str(zoo.out), "--sha1", digest)
    assert zoo.run(*args)[0] == 0
    assert [s.status for s in zoo.server.served] == [200]
    model = zoo.out / "voc-fcn8s.onnx"
    made = model.stat().st_mtime_ns
    zoo.server.shutdown()
    zoo.server.server_close()  # no network from here on
    status, stdout, _ = zoo.run("voc-fcn8s", "--out", str(zoo.out))
    assert status == 0
    assert f"{model} is up to date" in stdout
    assert model.stat().st_mtime_ns == made
    # A digest of other weights is no reason to keep it: checked, refused, left as it was.
    status, _, stderr = zoo.run("voc-fcn8s", "--out", str(zoo.out), "--sha1", "0" * 40)
    assert status == 2
    assert "cannot reach" in stderr
    assert model.stat().st_mtime_ns == made
    model.unlink()
    status, stdout, stderr = zoo.run(*args)
    assert status == 0, stderr  # the cached weights, checked again
    assert f"SHA1 {digest} ok" in stdout
    assert read_metadata(model).origin["sha1"] == digest
    assert len(zoo.server.served) == 1


@pytest.mark.slow
def test_a_cut_download_fails_clearly_leaves_no_model_and_resumes(zoo: Zoo) -> None:
    digest = zoo.publish()
    size = (zoo.server.root / CAFFE_FILE).stat().st_size
    zoo.server.cut_after = size // 3
    args = ("voc-fcn8s", "--out", str(zoo.out), "--sha1", digest)
    status, _, stderr = zoo.run(*args)
    assert status == 2
    assert f"stopped after {size // 3:,} bytes" in stderr
    assert "run again to resume it" in stderr
    assert stderr.count("\n") == 1  # one line
    assert listing(zoo.out) == []
    assert listing(zoo.cache) == [f"{CAFFE_FILE}.part"]  # nothing under the final name
    assert zoo.run(*args)[0] == 0
    assert zoo.server.served[-1].range == f"bytes={size // 3}-"
    assert listing(zoo.out) == ["voc-fcn8s.onnx"]


def test_a_corrupted_download_fails_its_digest_and_leaves_nothing(zoo: Zoo) -> None:
    digest = zoo.publish()
    zoo.server.corrupt = True
    status, _, stderr = zoo.run("voc-fcn8s", "--out", str(zoo.out), "--sha1", digest)
    assert status == 2
    assert f"expected {digest}: a damaged download" in stderr
    assert listing(zoo.out) == []
    assert listing(zoo.cache) == []


def test_weights_that_are_not_the_published_file_fail_its_sha1(zoo: Zoo) -> None:
    zoo.publish()  # not the reference's file: the published SHA1 refuses it
    status, _, stderr = zoo.run("voc-fcn8s", "--out", str(zoo.out))
    assert status == 2
    assert "expected c449ea74dd7d83751d1357d6a8c323fcf4038962: a damaged download" in stderr
    assert listing(zoo.out) == []
    assert listing(zoo.cache) == []


@pytest.mark.slow
def test_offline_names_the_url_and_where_a_file_put_by_hand_is_used(zoo: Zoo) -> None:
    digest = zoo.publish()
    url = zoo.server.url(CAFFE_FILE)
    zoo.server.shutdown()
    zoo.server.server_close()  # connections are refused from here on
    args = ("voc-fcn8s", "--out", str(zoo.out), "--sha1", digest)
    status, _, stderr = zoo.run(*args)
    assert status == 2
    assert stderr.count("\n") == 1
    assert f"cannot reach {url}" in stderr
    assert f"put the file at {zoo.cache / CAFFE_FILE} by hand" in stderr
    assert listing(zoo.out) == []
    (zoo.cache / CAFFE_FILE).write_bytes((zoo.server.root / CAFFE_FILE).read_bytes())
    status, _stdout, stderr = zoo.run(*args)
    assert status == 0, stderr
    assert read_metadata(zoo.out / "voc-fcn8s.onnx").origin["sha1"] == digest


@pytest.mark.slow
def test_weights_without_a_published_digest_that_do_not_convert_leave_the_cache(zoo: Zoo) -> None:
    """voc-fcn16s has no published digest: a file cut where the server's length agrees is
    caught by the conversion, and removed so that the next run fetches it afresh."""
    name = "fcn16s-heavy-pascal.caffemodel"
    zoo.publish(name, "fcn16s")
    data = (zoo.server.root / name).read_bytes()
    (zoo.server.root / name).write_bytes(data[: len(data) // 2])
    status, _, stderr = zoo.run("voc-fcn16s", "--out", str(zoo.out))
    assert status == 2
    assert name in stderr
    assert "removed from the cache: run again" in stderr
    assert listing(zoo.out) == []
    assert listing(zoo.cache) == []
    (zoo.server.root / name).write_bytes(data)
    status, stdout, stderr = zoo.run("voc-fcn16s", "--out", str(zoo.out))
    assert status == 0, stderr
    assert "no published digest" in stdout
    origin = read_metadata(zoo.out / "voc-fcn16s.onnx").origin
    assert origin["checked"] == "by conversion only: no published digest"
    assert origin["sha1"] == hashlib.sha1(data).hexdigest()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("voc-fcn8", "--out", "x"), "no pretrained model 'voc-fcn8'; did you mean voc-fcn8s?"),
        (("voc-fcn8s",), "--out DIR is required"),
        ((), "give a model NAME"),
        (("voc-fcn8s", "--out", "x", "--sha1", "abc"), "--sha1 'abc': expected 40 hex digits"),
        (("voc-fcn8s", "--out", "x", "--sha256", "0" * 40), "expected 64 hex digits"),
    ],
    ids=["unknown", "no-out", "no-name", "short-sha1", "short-sha256"],
)
def test_bad_arguments_are_named_before_any_download(
    args: tuple[str, ...], message: str, zoo: Zoo, tmp_path: Path
) -> None:
    status, _, stderr = zoo.run(*(str(tmp_path / "x") if a == "x" else a for a in args))
    assert status == 2
    assert message in stderr
    assert zoo.server.served == []
    assert not (tmp_path / "x").exists()


def test_the_list_names_every_model_its_figures_and_what_is_cached(zoo: Zoo) -> None:
    status, stdout, _ = zoo.run("--list")
    assert status == 0
    before = stdout.splitlines()
    assert [line.split()[0] for line in before[1:-1]] == list(MODELS)
    assert all(line.endswith(" no") for line in before[1:-1])
    assert "mean IU 65.5" in before[3]
    assert before[-1] == f"cache: {zoo.cache}"
    zoo.cache.mkdir()
    (zoo.cache / CAFFE_FILE).write_bytes(b"put there by hand")
    after = zoo.run("--list")[1].splitlines()
    assert [line.endswith(" yes") for line in after[1:-1]] == [
        name == "voc-fcn8s" for name in MODELS
    ]


@pytest.mark.parametrize("name", ["torchvision-fcn-resnet50", "torchvision-fcn-resnet101"])
def test_torchvision_entries_are_torchvisions_own_weights_and_figures(name: str) -> None:
    entry = MODELS[name]
    weights = get_model_weights(entry.arch).COCO_WITH_VOC_LABELS_V1
    assert entry.url == weights.url
    assert weights.url.endswith(f"-{entry.sha256}.pth")
    figures = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]
    assert entry.metrics == {
        "mean_iu": pytest.approx(figures["miou"] / 100),
        "pixel_accuracy": pytest.approx(figures["pixel_acc"] / 100),
    }
    assert entry.size_mib == pytest.approx(weights.meta["_file_size"], abs=1)


@pytest.mark.slow
def test_torchvision_weights_are_checked_exported_with_their_figures_and_label_as_torchvision(
    zoo: Zoo,
) -> None:
    model = random_fcn_resnet50()
    weights = zoo.server.root / MODELS["torchvision-fcn-resnet50"].file_name
    torch.save(published_like(model), weights)
    args = ("torchvision-fcn-resnet50", "--out", str(zoo.out))
    # Random weights cannot carry the SHA256 that torchvision's file name begins.
    status, _, stderr = zoo.run(*args)
    assert status == 2
    assert "expected 1167a1af...: a damaged download" in stderr
    assert listing(zoo.out) == []
    with open(weights, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    status, stdout, stderr = zoo.run(*args, "--sha256", digest, "--no-verify")
    assert status == 0, stderr
    assert f"SHA256 {digest} ok" in stdout
    path = zoo.out / "torchvision-fcn-resnet50.onnx"
    meta = read_metadata(path)
    assert (meta.arch, meta.backbone) == ("fcn-resnet50", "resnet50")
    assert meta.metrics == {"mean_iu": 0.605, "pixel_accuracy": 0.914}
    assert meta.origin["url"] == zoo.server.url(weights.name)
    assert meta.origin["checked"] == f"SHA256 {digest}"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).integers(0, 256, size=(1, 75, 101, 3), dtype=np.uint8)
    (labels,) = session.run(["labels"], {"image": image})
    expected = torchvision_labels(model, image)
    assert len(np.unique(expected)) > 1
    assert np.array_equal(labels, expected)


@pytest.mark.slow
@pytest.mark.anyio
async def test_fcn_alexnet_is_fetched_converted_on_its_backbone_and_served(zoo: Zoo) -> None:
    """voc-fcn-alexnet: the reference's Caffe AlexNet layout (no published digest), converted
    onto the caffe-alexnet backbone, its tiling and figures in the model file."""
    name = "fcn-alexnet-pascal.caffemodel"
    weights = zoo.server.root / name
    cw.write(weights, cw.net(cw.alexnet_layers(1 / 16, seed=4)))
    status, stdout, stderr = zoo.run("voc-fcn-alexnet", "--out", str(zoo.out))
    assert status == 0, stderr
    assert "published: mean IU 48.0 on PASCAL VOC 2011 seg11valid" in stdout
    model = zoo.out / "voc-fcn-alexnet.onnx"
    meta = read_metadata(model)
    assert (meta.arch, meta.backbone, meta.width) == ("fcn32s", "caffe-alexnet", 1 / 16)
    assert (meta.tiling.align, meta.tiling.context) == (32, 208)
    assert meta.origin["checked"] == "by conversion only: no published digest"
    assert MODELS["voc-fcn-alexnet"].backbone == meta.backbone

    image = np.random.default_rng(2).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    expected = torch_labels(weights, image)
    async with serve(model) as client:
        response = await client.post(
            "/segment", content=png(image), headers={"content-type": "image/png"}
        )
    assert response.status_code == 200, response.text
    assert len(np.unique(expected)) > 1
    assert (png_labels(response.content) == expected).mean() > 0.99
