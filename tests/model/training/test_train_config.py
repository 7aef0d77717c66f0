"""The training config (defaults = the reference solver, then a file, then flags), the
solver's parameter groups and loss, the init schemes, and refusals that name their cause."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contract.palette import voc_colormap
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.synthetic import write_synthetic
from model.devices import DeviceError, amp_dtype, resolve_device
from model.nets.backbones import WeightsError, initialize
from model.nets.fcn import FCN8s, FCN16s, FCN32s, ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, TORCHVISION
from model.training.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    flag_overrides,
)
from model.training.train import (
    add_arguments,
    config_from_args,
    parameter_groups,
    rng_state,
    segmentation_loss,
    set_rng_state,
)
from tests.model.nets.test_backbones import scaled_vgg16_state_dict

TINY = 1 / 32


@pytest.fixture(scope="module")
def synth_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", 2, 1, (32, 32))


def test_defaults_are_the_reference_solver() -> None:
    config = TrainConfig()
    assert (config.arch, config.loss, config.lr_policy) == ("fcn32s", "sum", "fixed")
    assert (config.momentum, config.weight_decay, config.bias_lr_mult) == (0.99, 5e-4, 2.0)
    assert (config.batch_size, config.crop_size, config.flip) == (1, None, False)
    assert config.init == "imagenet"
    # The staged reference rates: each stage 100x lower; the mean loss has its own.
    assert [TrainConfig(arch=a).learning_rate for a in ("fcn32s", "fcn16s", "fcn8s")] == [
        1e-10,
        1e-12,
        1e-14,
    ]
    assert TrainConfig(arch="fcn8s-atonce").learning_rate == 1e-10
    assert TrainConfig(arch="fcn8s", loss="mean").learning_rate == 1e-4
    assert TrainConfig(arch="fcn8s", lr=3e-3).learning_rate == 3e-3


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_file_over_defaults_and_flags_over_file(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "arch: fcn16s\nlr: 0.01\nmax-iter: 50\ncrop_size: [64, 96]\nflip: true\n"
    )
    config = config_from_args(parse(["--config", str(config_file), "--max-iter", "7", "--no-flip"]))
    assert (config.arch, config.lr, config.max_iter, config.flip) == ("fcn16s", 0.01, 7, False)
    assert config.crop == (64, 96)
    assert config.momentum == 0.99  # untouched default
    assert TrainConfig.from_dict(config.to_dict()) == config  # what checkpoints store
    assert flag_overrides(parse(["--width", "0.25"])) == {"width": 0.25}
    assert TrainConfig(crop_size=[80]).crop == (80, 80)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_iter: 0\n", "run.yaml: max-iter: must be at least 1, got 0"),
        ("lerning_rate: 0.1\n", "run.yaml: unknown setting 'lerning_rate'"),
        ("momentum: fast\n", "run.yaml: momentum: expected a number, got 'fast'"),
        ("flip: 1\n", "run.yaml: flip: expected true or false"),
        ("- a list\n", "run.yaml: expected a mapping of settings"),
    ],
    ids=["bad-value", "unknown-key", "wrong-type", "int-for-bool", "not-a-mapping"],
)
def test_bad_config_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_from_args(parse(["--config", str(config_file)]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-iter", "0"], "--max-iter: must be at least 1, got 0"),
        (["--momentum", "1.5"], "--momentum: must be in [0, 1), got 1.5"),
        (["--crop-size", "1", "2", "3"], "--crop-size: needs H or H W"),
        (["--amp", "fp16", "--device", "cpu", "--data", "x"], "--amp fp16: needs a CUDA device"),
        (["--config", "missing.yaml"], "missing.yaml: no such config file"),
        (["--init", "imagenet21k", "--data", "DATA"], "unknown init 'imagenet21k'"),
        (["--data", "nowhere"], "nowhere: no such data folder"),
    ],
    ids=["max-iter", "momentum", "crop", "amp-on-cpu", "config-file", "init", "data"],
)
def test_train_command_names_the_bad_flag(
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    synth_voc: Path,
) -> None:
    flags = [str(synth_voc) if f == "DATA" else f for f in flags]
    assert main(["train", "--out", str(tmp_path / "run"), "--workers", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcn train: error: ")
    assert message in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_amp_is_cuda_only() -> None:
    assert amp_dtype("none", torch.device("cpu")) is None
    with pytest.raises(DeviceError, match="--amp bf16: needs a CUDA device"):
        amp_dtype("bf16", torch.device("cpu"))


def test_every_field_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert {f for f in TrainConfig.__dataclass_fields__} <= flags


def test_groups_leave_frozen_upsampling_out_and_double_bias_lr() -> None:
    net = FCN8s(5, width=TINY)
    groups = parameter_groups(net, 1e-3, 5e-4, 2.0)
    weights, biases = groups
    given = {id(p) for g in groups for p in g["params"]}
    assert given == {id(p) for p in net.parameters() if p.requires_grad}
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert id(getattr(net, name).weight) not in given
    assert id(net.fc6.weight) in {id(p) for p in weights["params"]}
    assert id(net.fc6.bias) in {id(p) for p in biases["params"]}
    assert (weights["lr"], weights["weight_decay"]) == (1e-3, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (2e-3, 0.0)
    learned = FCN8s(5, width=TINY, learn_upsampling=True)
    assert id(learned.upscore8.weight) in {
        id(p) for p in parameter_groups(learned, 1, 0, 2)[0]["params"]
    }


def test_losses_sum_per_image_or_average_the_labelled_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    labelled = int((target != 255).sum())
    # Caffe's normalize: false: the pixel sum over the batch's images, divided by 2 images.
    assert torch.allclose(segmentation_loss(logits, target, "sum"), per_pixel.sum() / 2)
    one = segmentation_loss(logits[:1], target[:1], "sum")
    assert torch.allclose(one, per_pixel[0].sum())
    # A batch of one image twice is the loss of that image: the step does not grow.
    twice = segmentation_loss(logits[:1].repeat(2, 1, 1, 1), target[:1].repeat(2, 1, 1), "sum")
    assert torch.allclose(twice, one)
    assert torch.allclose(segmentation_loss(logits, target, "mean"), per_pixel.sum() / labelled)
    assert float(segmentation_loss(logits, torch.full_like(target, 255), "mean")) == 0.0


def test_rng_state_round_trips_and_says_what_it_cannot_restore() -> None:
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert state["cuda"] is None  # a CPU run has no CUDA RNG to save
    expected = torch.rand(3)
    assert set_rng_state(state, cpu) == ""
    assert torch.equal(torch.rand(3), expected)
    saved_on_gpu = {**state, "cuda": torch.zeros(16, dtype=torch.uint8)}
    assert "saved on CUDA" in set_rng_state(saved_on_gpu, cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_of_the_run_device_round_trips_and_missing_devices_are_named() -> None:
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    state = rng_state(device)
    expected = torch.rand(3, device=device)
    assert set_rng_state(state, device) == ""
    assert torch.equal(torch.rand(3, device=device), expected)
    assert "saved off CUDA" in set_rng_state({**state, "cuda": None}, device)
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"--device 'cuda:{count}': this machine has"):
        resolve_device(f"cuda:{count}")


def test_initialize_dispatches_on_the_scheme(tmp_path: Path) -> None:
    width = 1 / 16
    vgg_file = tmp_path / "vgg16.pt"
    torch.save(scaled_vgg16_state_dict(width), vgg_file)
    net = FCN32s(21, width=width)
    assert initialize(net, f"vgg16:{vgg_file}") == TORCHVISION
    assert torch.equal(net.conv1_1.weight, torch.load(vgg_file)["features.0.weight"])

    parent = build_fcn(ModelSpec("fcn32s", 21, width))
    torch.nn.init.normal_(parent.score_fr.weight)
    ckpt = Checkpoint(
        parent.spec, parent.state_dict(), [f"c{i}" for i in range(21)], voc_colormap(21), CAFFE
    )
    save_checkpoint(ckpt, tmp_path / "parent.pt")
    child = FCN16s(21, width=width)
    assert initialize(child, f"checkpoint:{tmp_path / 'parent.pt'}") == CAFFE  # carried over
    assert torch.equal(child.score_fr.weight, parent.score_fr.weight)
    assert not child.score_pool4.weight.any()

    before = FCN32s(21, width=width)
    assert initialize(before, "none") == TORCHVISION
    with pytest.raises(WeightsError, match="unknown init 'caffe'; use imagenet, vgg16:PATH"):
        initialize(before, "caffe")
    with pytest.raises(WeightsError, match="vgg16: needs a path"):
        initialize(before, "vgg16:")
    with pytest.raises(WeightsError, match="nothing.pt: no such VGG16 weights file"):
        initialize(before, f"vgg16:{tmp_path / 'nothing.pt'}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_and_eval_on_cuda(synth_voc: Path, tmp_path: Path, amp: str) -> None:
    from model.evaluation.evaluate import evaluate
    from model.training.train import train

    config = TrainConfig(
        arch="fcn8s", width=1 / 16, init="none", data=str(synth_voc), loss="mean", max_iter=3,
        val_every=3, batch_size=2, crop_size=[32], workers=0, out=str(tmp_path / "run"),
        progress=False, device="cuda", amp=amp,
    )  # fmt: skip
    best = train(config)
    result = evaluate(best, synth_voc, device="cuda", amp=amp, workers=0)
    assert result.metrics.summary() == pytest.approx(load_checkpoint(best).metrics)


def test_caffe_vgg16_init_gives_caffe_preprocessing(tmp_path: Path) -> None:
    from model.caffe.caffemodel import CaffeModelError
    from tests.model.caffe import caffe_writer as cw

    width = 1 / 32
    path = tmp_path / "vgg.caffemodel"
    cw.write(path, cw.net(cw.vgg16_layers(width, classes=10), v1=True))
    net = FCN16s(21, width=width)
    assert initialize(net, f"caffe-vgg16:{path}") == CAFFE
    assert net.conv1_1.weight.any()
    assert not net.score_pool4.weight.any()
    with pytest.raises(CaffeModelError, match="missing.caffemodel"):
        initialize(net, f"caffe-vgg16:{tmp_path / 'missing.caffemodel'}")
