"""Each network's ``context`` (the pixels on either side that a label depends on, which tiled
inference relies on) checked by perturbation: changing one input row changes no row of the
logits farther than ``context`` from it, and does change one within 8 of that (the bound is
tight, not merely safe)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.nets.fcn import ARCHS, FCN, ModelSpec, build_fcn

# Tall enough for every row within the largest context (246) of the perturbed rows. A whole
# row is perturbed, so the width does not limit what is seen: 1, 16, 64 and 256 columns show
# the same extents.
ROWS, COLS = 560, 16
# Perturbed rows at eight phases of the stride-32 grid: the extent below a row grows by one
# pixel a phase and wraps every 32, so the largest is within 3 of one of these.
PERTURBED = range(260, 292, 4)
TIGHT = 8


# Every (backbone, arch) whose context is measured here.
NETS = [*(("vgg16", arch) for arch in ARCHS), ("caffe-alexnet", "fcn32s"), ("alexnet", "fcn32s")]


def random_net(backbone: str, arch: str) -> FCN:
    """A tiny float64 net whose every layer passes changes on: random non-zero weights (the
    score layers too) and positive biases, so few ReLUs are dead; bilinear upsampling kept."""
    torch.manual_seed(0)
    net = build_fcn(ModelSpec(arch, 3, 1 / 32, backbone=backbone)).double().eval()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):  # not the transposed (upsampling) convolutions
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            assert module.bias is not None
            nn.init.uniform_(module.bias, 0.05, 0.2)
    return net


@pytest.mark.parametrize(("backbone", "arch"), NETS, ids=[f"{b}-{a}" for b, a in NETS])
def test_a_row_changes_labels_up_to_context_rows_away_and_no_farther(
    backbone: str, arch: str
) -> None:
    net = random_net(backbone, arch)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, ROWS, COLS, dtype=torch.float64, generator=generator)
    # [1 + P, 3, H, W]: the image, then one copy per perturbed row.
    batch = image.repeat(1 + len(PERTURBED), 1, 1, 1)
    for i, row in enumerate(PERTURBED, start=1):
        batch[i, :, row] += torch.randn(3, COLS, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        logits = net(batch)
    changed = (logits[1:] != logits[:1]).any(dim=3).any(dim=1)  # [P, H]: rows that changed
    farthest = 0
    for row, rows_changed in zip(PERTURBED, changed, strict=True):
        distance = (rows_changed.nonzero().flatten() - row).abs()
        assert int(distance.max()) <= net.context, f"row {row} reaches {int(distance.max())}"
        farthest = max(farthest, int(distance.max()))
    assert farthest >= net.context - TIGHT, f"{arch}: context {net.context}, reach {farthest}"
