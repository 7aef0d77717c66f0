"""Weight surgery from torchvision's VGG16 and staged initialisation between stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg16

from model.nets.backbones import (
    WeightsError,
    init_from_parent,
    load_vgg16,
    torchvision_vgg16_state_dict,
)
from model.nets.fcn import FCN, FCN8s, FCN16s, FCN32s, ModelSpec, build_fcn, scaled
from model.nets.preprocessing import TORCHVISION

TINY = 1 / 16


def scaled_vgg16_state_dict(width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG16 state dict with every channel count scaled by ``width``."""
    torch.manual_seed(seed)
    net = vgg16(weights=None)
    state: dict[str, torch.Tensor] = {}
    c_in = 3
    for key, value in net.state_dict().items():
        prefix, index, kind = key.split(".")
        out = value.shape[0]
        if prefix == "features":
            out = scaled(out, width)
            shape = (out, c_in, 3, 3) if kind == "weight" else (out,)
            if kind == "bias":
                c_in = out
        else:
            fc = scaled(4096, width)
            if index == "0":
                shape = (fc, c_in * 49) if kind == "weight" else (fc,)
            elif index == "3":
                shape = (fc, fc) if kind == "weight" else (fc,)
            else:
                shape = (1000, fc) if kind == "weight" else (1000,)
        state[key] = torch.randn(shape) * 0.05
    return state


@pytest.mark.slow
def test_fc6_as_convolution_equals_the_classifier_on_a_7x7_pool5() -> None:
    state = scaled_vgg16_state_dict(TINY)
    net = FCN32s(21, width=TINY)
    load_vgg16(net, state)
    pool5 = torch.randn(2, scaled(512, TINY), 7, 7)
    as_conv = net.fc6(pool5)  # [2, 4096w, 1, 1]
    as_linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
    assert as_conv.shape == (2, scaled(4096, TINY), 1, 1)
    assert torch.allclose(as_conv.flatten(1), as_linear, atol=1e-5)
    # fc7 likewise, on fc6's output.
    h = torch.relu(as_conv)
    assert torch.allclose(
        net.fc7(h).flatten(1),
        F.linear(h.flatten(1), state["classifier.3.weight"], state["classifier.3.bias"]),
        atol=1e-5,
    )


@pytest.mark.slow
def test_surgery_reproduces_the_torchvision_features_exactly() -> None:
    state = scaled_vgg16_state_dict(TINY)
    net = FCN8s(5, width=TINY).eval()
    preprocessing = load_vgg16(net, state)
    assert preprocessing == TORCHVISION
    assert torch.equal(net.conv1_1.weight, state["features.0.weight"])
    assert torch.equal(net.conv5_3.bias, state["features.28.bias"])
    # Score layers start at zero: the new net predicts nothing until trained.
    assert not net.score_fr.weight.any()
    assert not net.score_pool3.weight.any()


@pytest.mark.slow
def test_full_width_torchvision_vgg16_maps_onto_every_network() -> None:
    state = vgg16(weights=None).state_dict()
    for arch in ("fcn32s", "fcn8s-atonce"):
        net = build_fcn(ModelSpec(arch, 21))
        load_vgg16(net, state)
        flat = state["classifier.0.weight"].view(4096, 512, 7, 7)
        assert torch.equal(net.fc6.weight, flat)
        assert torch.equal(net.fc7.weight.view(4096, 4096), state["classifier.3.weight"])


@pytest.mark.slow
def test_a_state_dict_file_loads_and_a_bad_one_is_named(tmp_path: Path) -> None:
    state = scaled_vgg16_state_dict(TINY)
    good = tmp_path / "vgg16.pth"
    torch.save(state, good)
    loaded = torchvision_vgg16_state_dict(good)
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])

    with pytest.raises(WeightsError, match="no such"):
        torchvision_vgg16_state_dict(tmp_path / "missing.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="broken.pth"):
        torchvision_vgg16_state_dict(broken)


@pytest.mark.slow
def test_weights_of_another_width_or_network_are_refused() -> None:
    with pytest.raises(WeightsError, match="conv1_1"):
        load_vgg16(FCN32s(21, width=TINY), scaled_vgg16_state_dict(TINY * 2))
    with pytest.raises(WeightsError, match="not a torchvision VGG16"):
        load_vgg16(FCN32s(21, width=TINY), {"conv.weight": torch.zeros(1)})


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * (0.3 if "score" in name else 0.2))
    return net.eval()


@pytest.mark.parametrize(("parent_cls", "child_cls"), [(FCN32s, FCN16s), (FCN16s, FCN8s)])
def test_a_new_stage_inherits_its_parent_and_zeroes_its_new_skip(
    parent_cls: type[FCN], child_cls: type[FCN]
) -> None:
    parent = randomised(parent_cls(4, width=TINY), seed=2)
    child = child_cls(4, width=TINY).eval()
    copied = init_from_parent(child, parent.state_dict())
    child_state = child.state_dict()
    for name in copied:
        assert torch.equal(child_state[name], parent.state_dict()[name])
    new_skip = child.skip_layers[-1]
    assert not getattr(child, new_skip).weight.any()
    assert not getattr(child, new_skip).bias.any()
    if parent_cls is FCN16s:  # 8s keeps the trained pool4 skip of its 16s parent
        assert torch.equal(child.score_pool4.weight, parent.score_pool4.weight)


@pytest.mark.parametrize(("parent_cls", "child_cls"), [(FCN32s, FCN16s), (FCN16s, FCN8s)])
def test_a_new_stage_starts_from_its_parents_predictions(
    parent_cls: type[FCN], child_cls: type[FCN]
) -> None:
    """The new skip adds exactly zero, so the child differs from its parent only by the
    frozen bilinear path: 2x then 16x instead of 32x (or 2x then 8x instead of 16x).
    Cascaded linear interpolation is not the single one where the coarse scores bend, so
    labels agree almost everywhere, and exactly for spatially constant scores."""
    parent = randomised(parent_cls(4, width=TINY), seed=3)
    child = child_cls(4, width=TINY).eval()
    init_from_parent(child, parent.state_dict())
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        agree = (parent(x).argmax(1) == child(x).argmax(1)).float().mean()
    assert agree > 0.95

    # Constant coarse scores (score_fr reduced to its bias, no skip): the same labels.
    with torch.no_grad():
        for name in ("score_fr", *parent.skip_layers):
            getattr(parent, name).weight.zero_()
            getattr(parent, name).bias.zero_()
        parent.score_fr.bias.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
        init_from_parent(child, parent.state_dict())
        p_labels, c_labels = parent(x).argmax(1), child(x).argmax(1)
    assert torch.equal(p_labels, c_labels)
    assert bool((c_labels == 2).all())


def test_staged_init_refuses_a_parent_of_another_width() -> None:
    parent = FCN32s(4, width=TINY)
    with pytest.raises(WeightsError, match="fcn16s"):
        init_from_parent(FCN16s(4, width=TINY * 2), parent.state_dict())
