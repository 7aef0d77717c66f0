"""The VGG16 nets' optional second head (SIFT Flow's geometric classes): built from the spec,
named like the first head plus ``_geo``, scoring the same trunk, and absent by default."""

from __future__ import annotations

import pytest
import torch

from model.nets.base import ModelSpec, build_fcn

TINY = 1 / 32


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_a_second_head_adds_geo_layers_and_leaves_the_first_as_it_was(arch: str) -> None:
    torch.manual_seed(0)
    one = build_fcn(ModelSpec(arch, 5, TINY))
    two = build_fcn(ModelSpec(arch, 5, TINY, geometry_classes=3))
    own = list(one.state_dict())
    extra = [name for name in two.state_dict() if name not in own]
    # The one-head net's names, in its order, then the geometric head's: each a _geo twin.
    assert list(two.state_dict())[: len(own)] == own
    assert extra
    assert all(name.split(".")[0].endswith("_geo") for name in extra)
    assert {name.replace("_geo", "") for name in extra} <= set(own)
    assert "geometry_classes" not in one.spec.to_dict()  # one-head records as before
    assert ModelSpec.from_dict(two.spec.to_dict()) == two.spec

    # With the same trunk and semantic head, the semantic scores are the one-head net's.
    two.load_state_dict(one.state_dict(), strict=False)
    for name in two.score_layers:  # non-zero scores, so the comparison means something
        torch.nn.init.normal_(getattr(two, name).weight)
    one.load_state_dict({k: v for k, v in two.state_dict().items() if k in own})
    x = torch.randn(2, 3, 21, 34)
    with torch.no_grad():
        logits, geometry = two.eval()(x, geometry=True)
        alone = one.eval()(x)
        assert torch.equal(two(x), logits)
    assert logits.shape == (2, 5, 21, 34)
    assert geometry.shape == (2, 3, 21, 34)
    assert torch.allclose(logits, alone, atol=1e-6)
    assert not torch.allclose(geometry, torch.zeros_like(geometry))


def test_only_vgg16_nets_take_a_second_head() -> None:
    with pytest.raises(ValueError, match="has no geometric head; only the VGG16 nets"):
        build_fcn(ModelSpec("fcn32s", 5, TINY, backbone="alexnet", geometry_classes=3))
    with pytest.raises(ValueError, match="at least 2, got 1"):
        build_fcn(ModelSpec("fcn32s", 5, TINY, geometry_classes=1))
    with pytest.raises(ValueError, match="fcn32s has no geometric head"):
        build_fcn(ModelSpec("fcn32s", 5, TINY))(torch.zeros(1, 3, 8, 8), geometry=True)
