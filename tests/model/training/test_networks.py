"""A new run's weights: every ``--init`` scheme gives its weights and their preprocessing,
and fine-tuning from a previous stage keeps the names of the data (or of ``--classes``)
and says what it renamed or dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.palette import voc_colormap
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.data.synthetic import SYNTH_CLASSES
from model.nets.alexnet import TORCHVISION_INDEX
from model.nets.backbones import WeightsError
from model.nets.fcn import FCN16s, FCN32s, ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, TORCHVISION
from model.training.config import ConfigError
from model.training.networks import initialize
from model.training.runlog import LAST
from model.training.train import train
from tests.model.nets.test_backbones import scaled_vgg16_state_dict
from tests.model.training.support import tiny_config


@pytest.mark.slow
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


@pytest.mark.slow
def test_fine_tuning_keeps_the_names_of_the_data_or_of_classes(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init checkpoint: brings the parent's weights and preprocessing, not its names."""
    parent = build_fcn(ModelSpec("fcn32s", len(SYNTH_CLASSES), 1 / 32))
    parent_classes = [f"voc{i}" for i in range(len(SYNTH_CLASSES))]
    palette = [(i, i, i) for i in range(len(SYNTH_CLASSES))]
    parent_file = tmp_path / "parent.pt"
    save_checkpoint(
        Checkpoint(parent.spec, parent.state_dict(), parent_classes, palette, CAFFE), parent_file
    )
    settings = {
        "arch": "fcn16s", "init": f"checkpoint:{parent_file}", "max_iter": 1, "val_every": 1,
        "check_data": False,
    }  # fmt: skip
    train(tiny_config(synth, tmp_path / "data-names", **settings))
    ckpt = load_checkpoint(tmp_path / "data-names" / LAST)
    assert ckpt.classes == list(SYNTH_CLASSES)
    assert ckpt.palette[: len(SYNTH_CLASSES)] == voc_colormap(len(SYNTH_CLASSES))
    assert ckpt.preprocessing == CAFFE  # carried over with the weights
    printed = capsys.readouterr().out
    assert f"warning: init: {parent_file} names its classes otherwise" in printed
    assert "voc1 -> disc" in printed
    assert "dropped" not in printed  # a 32s parent leaves nothing behind in a 16s

    # Back a stage: the 8s's own skip has no place in a 16s, and the run says so.
    fcn8s = build_fcn(ModelSpec("fcn8s", len(SYNTH_CLASSES), 1 / 32))
    fcn8s_file = tmp_path / "fcn8s.pt"
    save_checkpoint(
        Checkpoint(fcn8s.spec, fcn8s.state_dict(), list(SYNTH_CLASSES), palette, CAFFE),
        fcn8s_file,
    )
    back = {**settings, "init": f"checkpoint:{fcn8s_file}"}
    train(tiny_config(synth, tmp_path / "back", **back))
    assert "fcn16s has no place for fcn8s's score_pool3" in capsys.readouterr().out

    named = ["sea", "disc", "square", "triangle", "ring", "bar"]
    train(tiny_config(synth, tmp_path / "flag-names", classes=named, **settings))
    assert load_checkpoint(tmp_path / "flag-names" / LAST).classes == named


def torchvision_alexnet_layout(width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout AlexNet state dict (features.N, classifier.N, fc6/fc7 as Linear)
    of the shapes of a width-``width`` FCN-AlexNet, random values, plus the ImageNet fc8."""
    torch.manual_seed(seed)
    net = build_fcn(ModelSpec("fcn32s", 21, width, backbone="alexnet"))
    state = {}
    for name, source in TORCHVISION_INDEX.items():
        layer = getattr(net, name)
        weight = torch.randn(layer.weight.shape)
        state[f"{source}.weight"] = weight.flatten(1) if name.startswith("fc") else weight
        state[f"{source}.bias"] = torch.randn(layer.bias.shape)
    state["classifier.6.weight"] = torch.randn(1000, net.fc7.out_channels)
    return state


def test_alexnet_inits_fit_their_backbone_only(tmp_path: Path) -> None:
    from model.caffe.caffemodel import CaffeModelError
    from tests.model.caffe import caffe_writer as cw

    width = 1 / 16
    state = torchvision_alexnet_layout(width)
    saved = tmp_path / "alexnet.pt"
    torch.save(state, saved)
    net = build_fcn(ModelSpec("fcn32s", 21, width, backbone="alexnet"))
    assert initialize(net, f"alexnet:{saved}") == TORCHVISION
    assert torch.equal(net.conv4.weight, state["features.8.weight"])
    assert torch.equal(net.fc6.weight.flatten(1), state["classifier.1.weight"])

    bvlc = tmp_path / "bvlc_alexnet.caffemodel"
    layers = cw.alexnet_layers(width, imagenet=True)
    cw.write(bvlc, cw.net(layers, v1=True))
    caffe = build_fcn(ModelSpec("fcn32s", 21, width, backbone="caffe-alexnet"))
    assert initialize(caffe, f"caffe-alexnet:{bvlc}") == CAFFE
    conv2 = next(layer for layer in layers if layer.name == "conv2").blobs[0]
    assert torch.equal(caffe.conv2.weight, torch.from_numpy(conv2))

    vgg = FCN32s(21, width=width)
    with pytest.raises(WeightsError, match="alexnet weights, but the network is on vgg16"):
        initialize(vgg, f"alexnet:{saved}")
    with pytest.raises(WeightsError, match="caffe-alexnet weights, but the network is on alexnet"):
        initialize(net, f"caffe-alexnet:{bvlc}")
    with pytest.raises(WeightsError, match="torchvision has no caffe-alexnet .*caffe-alexnet:PATH"):
        initialize(caffe, "imagenet")
    with pytest.raises(WeightsError, match="alexnet: needs a path"):
        initialize(net, "alexnet:")
    with pytest.raises(CaffeModelError, match="alexnet.pt: not a readable Caffe model"):
        initialize(caffe, f"caffe-alexnet:{saved}")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["caffe-alexnet", "alexnet"])
def test_an_alexnet_run_trains_and_checkpoints_its_backbone(
    synth: Path, tmp_path: Path, backbone: str
) -> None:
    out = tmp_path / backbone
    train(tiny_config(synth, out, backbone=backbone, max_iter=1, val_every=1, check_data=False))
    ckpt = load_checkpoint(out / LAST)
    assert ckpt.spec == ModelSpec("fcn32s", len(SYNTH_CLASSES), 1 / 32, backbone=backbone)
    net = ckpt.build_model().eval()
    assert net.backbone == backbone
    assert net(torch.zeros(1, 3, 9, 13)).shape == (1, len(SYNTH_CLASSES), 9, 13)
    # A later stage must stay on the same trunk.
    with pytest.raises(ConfigError, match=f"is on {backbone}, this run's --backbone is vgg16"):
        train(tiny_config(synth, tmp_path / "next", init=f"checkpoint:{out / LAST}", max_iter=1))
