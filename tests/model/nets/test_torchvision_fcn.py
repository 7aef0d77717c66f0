"""torchvision's FCNs' ``context`` (the pixels either side a label depends on, recorded as
``fcn.tiling``) checked by perturbation, as tests/model/nets/test_receptive_field.py checks ours:
changing one input row changes no logit row farther than ``context`` from it, and does change
one within 8 of that (the bound is tight, not merely safe)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.nets.torchvision_fcn import (
    CONTEXT,
    NAMES,
    OUTPUT_STRIDE,
    TorchvisionFCNName,
    build_torchvision_fcn,
    torchvision_tiling,
)

# Tall enough for every row within the context of the perturbed rows, and a multiple of the
# stride (upsampling then maps the grid without stretch: the widest reach). A whole row is
# perturbed, so one column of the stride-8 grid shows the same extents as many.
ROWS = {"fcn_resnet50": 640, "fcn_resnet101": 1104}
COLS = 8
TIGHT = 8


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_row_changes_labels_up_to_context_rows_away_and_no_farther(
    name: TorchvisionFCNName,
) -> None:
    torch.manual_seed(0)
    net = build_torchvision_fcn(name).double().eval()
    for module in net.modules():  # positive biases, so that few ReLUs are dead
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.bias, 0.05, 0.2)
    rows = ROWS[name]
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, rows, COLS, dtype=torch.float64, generator=generator)
    # The rows at every phase of the stride-8 grid, around the middle.
    perturbed = range(rows // 2, rows // 2 + OUTPUT_STRIDE)
    farthest = 0
    with torch.no_grad():
        logits = net(image)
        for row in perturbed:
            changed = image.clone()
            changed[:, :, row] += torch.randn(3, COLS, dtype=torch.float64, generator=generator)
            # One image a pass: batched, bilinear upsampling differs by 1e-16 everywhere.
            rows_changed = (net(changed) != logits).any(dim=3).any(dim=1)[0]  # [H]
            distance = (rows_changed.nonzero().flatten() - row).abs()
            assert int(distance.max()) <= CONTEXT[name], f"row {row} reaches {distance.max()}"
            farthest = max(farthest, int(distance.max()))
    assert farthest >= CONTEXT[name] - TIGHT, f"{name}: context {CONTEXT[name]}, reach {farthest}"
    assert torchvision_tiling(name).to_dict() == {"align": 8, "context": CONTEXT[name]}


def test_the_network_returns_torchvisions_out_logits() -> None:
    net = build_torchvision_fcn("fcn_resnet50").eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        logits = net(x)
        assert torch.equal(logits, net.model(x)["out"])
    assert logits.shape == (2, 21, 37, 53)
    assert net.model.aux_classifier is None
