"""Reference Caffe weights onto our networks: ``fcn convert-caffe`` and Caffe's VGG16."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.palette import VOC_CLASSES, voc_colormap
from model.caffe.caffemodel import CaffeModelError
from model.caffe.convert import convert_caffemodel, load_caffe_vgg16
from model.checkpoint import load_checkpoint
from model.cli import main
from model.nets.fcn import FCN8s, FCN32s, bilinear_kernel
from model.nets.preprocessing import CAFFE, Normalize
from tests.model.caffe import caffe_writer as cw

WIDTH = 1 / 32  # conv1_1 has 2 channels, fc6/fc7 128
ROOT = Path(__file__).resolve().parents[3]


def expected_tensors(layers: list[cw.Layer]) -> dict[str, torch.Tensor]:
    """The state-dict entries a file's layers stand for, by the reference's names."""
    tensors = {}
    for layer in layers:
        if layer.type == "Scale":
            tensors[layer.name] = torch.from_numpy(layer.blobs[0])
            continue
        for kind, values in zip(("weight", "bias"), layer.blobs, strict=False):
            tensors[f"{layer.name}.{kind}"] = torch.from_numpy(values)
    return tensors


def assert_same_tensors(state: dict[str, torch.Tensor], layers: list[cw.Layer]) -> None:
    expected = expected_tensors(layers)
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value.reshape(state[name].shape)), name


def write_net(
    path: Path,
    layers: list[cw.Layer],
    *,
    v1: bool = False,
    encoding: cw.BlobEncoding | None = None,
) -> Path:
    cw.write(path, cw.net(layers, v1=v1, encoding=encoding))
    return path


def fcn_file(tmp_path: Path, arch: str = "fcn8s", name: str = "fcn.caffemodel") -> Path:
    return write_net(tmp_path / name, cw.reference_layers(arch, WIDTH))


def convert(*argv: str) -> int:
    return main(["convert-caffe", *argv])


CASES = {
    # arch, v1 (layers, field 2), blob encoding
    "fcn32s-layer-blobshape": ("fcn32s", False, cw.BlobEncoding()),
    "fcn16s-layer-legacy-dims": ("fcn16s", False, cw.BlobEncoding(legacy_shape=True)),
    "fcn8s-v1-legacy-dims": ("fcn8s", True, cw.BlobEncoding(legacy_shape=True)),
    "fcn8s-v1-blobshape-split": ("fcn8s", True, cw.BlobEncoding(split=True)),
    "atonce-layer-unpacked-double-extras": (
        "fcn8s-atonce",
        False,
        cw.BlobEncoding(packed=False, double=True, extras=True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_tensor_converts_exactly(tmp_path: Path, case: str) -> None:
    arch, v1, encoding = CASES[case]
    layers = cw.reference_layers(arch, WIDTH, seed=len(case))
    path = write_net(tmp_path / "w.caffemodel", layers, v1=v1, encoding=encoding)
    checkpoint = convert_caffemodel(path)  # architecture and width read from the file
    assert checkpoint.spec.arch == arch
    assert checkpoint.spec.width == WIDTH
    assert_same_tensors(checkpoint.state_dict, layers)
    assert checkpoint.build_model().spec == checkpoint.spec


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of each tensor's bytes: exact comparison without a second copy in memory."""
    return {name: hashlib.sha256(t.contiguous().numpy()).hexdigest() for name, t in tensors.items()}


@pytest.mark.slow
def test_full_width_fcn8s_converts_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference FCN-8s at its real size (513 MiB, fc6 alone 392 MiB), encoded as the
    official files are, through the command a user runs."""
    layers = cw.reference_layers("fcn8s", seed=7)
    source = write_net(tmp_path / "fcn8s-full.caffemodel", layers)
    expected = digests(expected_tensors(layers))
    del layers
    assert source.stat().st_size > 500 * 2**20
    out = tmp_path / "fcn8s.pt"
    assert convert(str(source), "--arch", "fcn8s", "--out", str(out)) == 0
    assert "134,489,759 weights" in capsys.readouterr().out
    source.unlink()
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec.width == 1.0
    assert tuple(checkpoint.state_dict["fc6.weight"].shape) == (4096, 512, 7, 7)
    assert digests(checkpoint.state_dict) == expected


def test_checkpoint_carries_voc_and_caffe_preprocessing_and_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fcn8s.pt"
    assert convert(str(fcn_file(tmp_path)), "--out", str(out)) == 0
    assert "fcn8s, 21 classes (voc)" in capsys.readouterr().out
    checkpoint = load_checkpoint(out)
    assert checkpoint.classes == list(VOC_CLASSES)
    assert checkpoint.palette == voc_colormap(21)
    assert checkpoint.preprocessing == CAFFE
    assert checkpoint.dataset == "voc"
    assert checkpoint.training_state is None
    net = checkpoint.build_model().eval()
    image = torch.randint(0, 256, (1, 3, 37, 45), dtype=torch.uint8)
    with torch.no_grad():
        logits = net(Normalize(checkpoint.preprocessing)(image))
    assert logits.shape == (1, 21, 37, 45)


def test_correct_sha1_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fcn_file(tmp_path)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest().upper()
    assert convert(str(path), "--sha1", sha1, "--out", str(tmp_path / "out.pt")) == 0
    assert f"SHA1 {sha1.lower()} ok" in capsys.readouterr().out


def truncated(tmp_path: Path) -> Path:
    path = fcn_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def last_layers_missing(tmp_path: Path) -> Path:
    layers = [layer for layer in cw.reference_layers("fcn8s", WIDTH) if layer.name != "upscore8"]
    return write_net(tmp_path / "short.caffemodel", layers)


def vgg16(tmp_path: Path) -> Path:
    return write_net(tmp_path / "vgg.caffemodel", cw.vgg16_layers(WIDTH, classes=10), v1=True)


def more_classes(tmp_path: Path) -> Path:
    # No reference data set has 61 classes (VOC 21, NYUDv2 40, PASCAL-Context 60).
    return write_net(tmp_path / "other.caffemodel", cw.reference_layers("fcn8s", WIDTH, 61))


def conv_kernel_5(tmp_path: Path) -> Path:
    layers = cw.reference_layers("fcn8s", WIDTH)
    for layer in layers:
        if layer.name == "conv3_1":
            layer.blobs[0] = np.zeros((8, 4, 5, 5), np.float32)
    return write_net(tmp_path / "k5.caffemodel", layers)


def deconv_with_bias(tmp_path: Path) -> Path:
    layers = cw.reference_layers("fcn8s", WIDTH)
    for layer in layers:
        if layer.name == "upscore8":
            layer.blobs.append(np.zeros(21, np.float32))
    return write_net(tmp_path / "bias.caffemodel", layers)


def duplicated_layer(tmp_path: Path) -> Path:
    layers = cw.reference_layers("fcn8s", WIDTH)
    return write_net(tmp_path / "twice.caffemodel", [*layers, layers[1]])


def noise(tmp_path: Path) -> Path:
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, np.uint8).tobytes())
    return path


def official_name(tmp_path: Path) -> Path:
    return fcn_file(tmp_path, name="fcn8s-heavy-pascal.caffemodel")


BAD_FILES = {
    "truncated": (truncated, [], r"truncated .*: .* needs \d+ bytes, the file ends at byte"),
    "cut-between-layers": (
        last_layers_missing,
        [],
        r"not the weights of any FCN; against the nearest, fcn8s: it lacks layers upscore8\. "
        r"Is the file cut short\?",
    ),
    "vgg16-as-fcn8s": (
        vgg16,
        ["--arch", "fcn8s"],
        r"not the weights of fcn8s: it lacks layers score_fr, .*has layers fcn8s does not: fc8"
        r".*Caffe's VGG16, which initialises training",
    ),
    "fcn32s-as-fcn8s": (fcn_file, ["--arch", "fcn8s"], r"Its layers are those of fcn32s"),
    "61-classes": (more_classes, [], r"layer 'score_fr' blob 0 .*scores for 61 classes, not 21"),
    "wrong-kernel": (
        conv_kernel_5,
        [],
        r"layer 'conv3_1' blob 0 has shape \[8, 4, 5, 5\]; conv3_1.weight of fcn8s at width "
        r"0.03125 is \[8, 4, 3, 3\]",
    ),
    "extra-blob": (deconv_with_bias, [], r"layer 'upscore8' \(Deconvolution\) has 2 blobs"),
    "duplicate-layer": (duplicated_layer, [], r"two layers named 'conv1_1'"),
    "not-caffe": (noise, [], r"noise.caffemodel: not a readable Caffe model"),
    "wrong-sha1": (fcn_file, ["--sha1", "0" * 40], r"SHA1 is [0-9a-f]{40}, expected 0{40}"),
    "official-name-wrong-content": (official_name, [], r"expected c449ea74dd7d83751d1357d6"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, flags, message = BAD_FILES[case]
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out_dir.mkdir()
    if make is fcn_file and "--arch" in flags:
        source = fcn_file(source_dir, "fcn32s")
    else:
        source = make(source_dir)
    out = out_dir / "model.pt"
    out.write_bytes(b"the previous checkpoint")
    assert convert(str(source), *flags, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcn convert-caffe: error: ")
    assert str(source) in err
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert out.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in out_dir.iterdir()] == ["model.pt"]


@pytest.mark.slow
def test_module_entry_point_reports_an_error_not_a_traceback(tmp_path: Path) -> None:
    source = noise(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "model.cli", "convert-caffe", str(source), "--out", "x.pt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"fcn convert-caffe: error: {source}: not a readable")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.caffemodel"], "missing.caffemodel: no such file"),
        (["{file}", "--sha1", "abc"], "--sha1 'abc': expected 40 hex digits"),
        (["{file}", "--out", "{tmp}/nowhere/x.pt"], "--out .*nowhere/x.pt: folder"),
        (["{file}", "--out", "{file}"], "would overwrite the weights"),
    ],
    ids=["no-file", "bad-sha1", "no-out-folder", "out-is-input"],
)
def test_bad_flags_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = fcn_file(tmp_path)
    args = [a.format(file=path, tmp=tmp_path) for a in argv]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "x.pt")]
    assert convert(*args) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("v1", "encoding"),
    [(True, cw.BlobEncoding(legacy_shape=True)), (False, cw.BlobEncoding())],
    ids=["v1-legacy-dims-as-released", "layer-blobshape-as-upgraded"],
)
def test_caffe_vgg16_initialises_the_trunk(
    tmp_path: Path, v1: bool, encoding: cw.BlobEncoding
) -> None:
    layers = cw.vgg16_layers(WIDTH, classes=10, seed=3)
    path = write_net(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", layers, v1=v1, encoding=encoding)
    net = FCN8s(width=WIDTH)
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            getattr(net, name).weight.fill_(1.0)
    assert load_caffe_vgg16(net, path) == CAFFE

    trunk = [layer for layer in layers if layer.blobs and layer.name != "fc8"]
    state = net.state_dict()
    assert_same_tensors({k: v for k, v in state.items() if k in expected_tensors(trunk)}, trunk)
    # The ImageNet classifier's fc6 [out, 512*7*7] as a 7x7 convolution over pool5.
    fc6 = layers[[layer.name for layer in layers].index("fc6")].blobs[0]
    assert torch.equal(net.fc6.weight[:, 5, 2, 3], torch.from_numpy(fc6[:, 5 * 49 + 2 * 7 + 3]))
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not getattr(net, name).weight.any()
        assert not getattr(net, name).bias.any()
    assert torch.equal(net.upscore8.weight[4, 4], bilinear_kernel(16))


def test_caffe_vgg16_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(CaffeModelError, match="not Caffe's VGG16: .*holds an fcn32s"):
        load_caffe_vgg16(FCN32s(width=WIDTH), fcn_file(tmp_path, "fcn32s"))
    vgg = write_net(tmp_path / "vgg.caffemodel", cw.vgg16_layers(WIDTH, classes=10), v1=True)
    with pytest.raises(CaffeModelError, match=r"layer 'conv1_1' blob 0 .*fcn32s at width 0.0625"):
        load_caffe_vgg16(FCN32s(width=2 * WIDTH), vgg)


def test_caffe_vgg16_loads_into_a_network_of_another_dtype(tmp_path: Path) -> None:
    # Tensors that cannot take the file's float32 bytes in place (float64 here, CUDA
    # alike) are copied into instead.
    layers = cw.vgg16_layers(WIDTH, classes=10, seed=5)
    path = write_net(tmp_path / "vgg.caffemodel", layers)
    net = FCN32s(width=WIDTH).double()
    load_caffe_vgg16(net, path)
    blobs = {layer.name: layer.blobs for layer in layers}
    assert net.conv5_3.weight.dtype == torch.float64
    assert torch.equal(net.conv5_3.weight.float(), torch.from_numpy(blobs["conv5_3"][0]))
    fc7 = torch.from_numpy(blobs["fc7"][0]).reshape(net.fc7.weight.shape)
    assert torch.equal(net.fc7.weight.float(), fc7)
