"""The reference solver: frozen upsampling left out, biases at lr x 2 without decay, the
pixel-summed and per-pixel mean losses, and the poly learning-rate policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.nets.fcn import FCN8s
from model.training.solver import learning_rate_at, parameter_groups, segmentation_loss

TINY = 1 / 32


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


def test_poly_decays_to_zero_and_fixed_stays() -> None:
    assert learning_rate_at(0.1, "fixed", 900, 1000) == 0.1
    assert learning_rate_at(0.1, "poly", 0, 1000) == 0.1
    assert learning_rate_at(0.1, "poly", 500, 1000) == pytest.approx(0.1 * 0.5**0.9)
    assert learning_rate_at(0.1, "poly", 1000, 1000) == 0.0
