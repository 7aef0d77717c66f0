"""Shift-and-stitch (section 3.2): shifted inputs and the rarefied (a trous) net give the same
dense score map and the same logits; with F = 32 every phase of the rarefied FCN-32s's
dense output is the net run on the input shifted to it; F = 1 is the net; the FCN contract
(float image in, logits of its size out) holds at every size; other nets are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.nets.fcn import ModelSpec, build_fcn
from model.nets.shift_stitch import ShiftStitchError, shift_and_stitch

TINY = 1 / 32


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """An FCN-32s with random scores (the real ones start at zero), in eval mode."""
    torch.manual_seed(0)
    net = build_fcn(ModelSpec("fcn32s", 3, TINY)).eval()
    torch.nn.init.normal_(net.score_fr.weight, std=0.3)
    torch.nn.init.normal_(net.score_fr.bias)
    return net


@pytest.mark.parametrize(("factor", "size"), [(2, (37, 50)), (4, (11, 29))], ids=["f2", "f4"])
def test_shifted_inputs_and_the_rarefied_net_agree(
    net: torch.nn.Module, factor: int, size: tuple[int, int]
) -> None:
    x = torch.randn(1, 3, *size)
    rarefied, shifted = shift_and_stitch(net, factor), shift_and_stitch(net, factor, "shift")
    with torch.no_grad():
        dense_r, offset_r = rarefied.dense_scores(x)
        dense_s, offset_s = shifted.dense_scores(x)
        logits_r = rarefied.interpolate(dense_r, offset_r, x)
        logits_s = shifted.interpolate(dense_s, offset_s, x)
        plain = net(x)
    assert offset_r == offset_s
    torch.testing.assert_close(dense_s, dense_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_s, logits_r, rtol=1e-5, atol=1e-5)
    assert logits_r.shape == plain.shape == (1, 3, *size)
    # Stride 32 / F: cells every 32 / F pixels, from one within a stride above the first
    # pixel to past the last one.
    stride = 32 // factor
    for side, cells in zip(size, dense_r.shape[-2:], strict=True):
        assert (cells - 1) * stride >= side
    assert not torch.allclose(logits_r, plain, atol=1e-3)  # a denser prediction indeed


@pytest.mark.slow
def test_f32_dense_output_of_the_rarefied_fcn32s_is_the_net_on_each_shifted_input(
    net: torch.nn.Module,
) -> None:
    """F = 32: every pool at stride 1. Phase (i, j) of the rarefied net's dense map (cells
    i, i + 32, ... down, j, j + 32, ... across) is the plain net's coarse score map on the
    framed input shifted by (i, j) pixels. The 1024 phases each cost a pass of the net, so
    the corners and a few others are checked here; bench/bench_ablations.py checks all."""
    x = torch.randn(1, 3, 9, 13)
    rarefied = shift_and_stitch(net, 32)
    shifted = shift_and_stitch(net, 32, "shift")
    margin = rarefied.margin
    frame = F.pad(x, (margin, 0, margin, 0))
    with torch.no_grad():
        dense = rarefied._rarefied(frame)
        for i, j in [(0, 0), (0, 31), (31, 0), (31, 31), (5, 17), (16, 3)]:
            coarse = net.score(net.trunk(frame[:, :, i:, j:])[2])
            phase = dense[:, :, i::32, j::32]
            assert phase.shape == coarse.shape, (i, j)
            torch.testing.assert_close(phase, coarse, rtol=1e-5, atol=1e-5)
        logits = rarefied(x)
    assert logits.shape == (1, 3, 9, 13)
    assert shifted.stride == rarefied.stride == 1


def test_factor_one_is_the_net_and_every_size_keeps_the_contract(net: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 20, 7)
    with torch.no_grad():
        assert torch.equal(shift_and_stitch(net, 1)(x), net(x))
        for size in [(1, 1), (33, 2)]:
            logits = shift_and_stitch(net, 4)(torch.randn(2, 3, *size))
            assert logits.shape == (2, 3, *size)
            assert bool(torch.isfinite(logits).all())


def test_logits_interpolate_the_dense_map_linearly_between_cell_centres(
    net: torch.nn.Module,
) -> None:
    """Pixel (y, x) gets the bilinear interpolation of the dense map at cell coordinates
    ((y, x) - centre of cell 0) / s, as the net's own 64/32 bilinear upsampling does."""
    wrapper = shift_and_stitch(net, 8)  # stride 4
    x = torch.randn(1, 3, 10, 7)
    with torch.no_grad():
        dense, _ = wrapper.dense_scores(x)
        logits = wrapper(x)
    s, margin = wrapper.stride, wrapper.margin
    centre = s * ((margin - 12.5) // s) + 12.5 - margin  # of the map's first cell, in (-s, 0]
    for y in range(10):
        for xx in range(7):
            u, v = (y - centre) / s, (xx - centre) / s
            i, j = int(u), int(v)
            a, b = u - i, v - j
            expected = (
                (1 - a) * (1 - b) * dense[0, :, i, j]
                + (1 - a) * b * dense[0, :, i, j + 1]
                + a * (1 - b) * dense[0, :, i + 1, j]
                + a * b * dense[0, :, i + 1, j + 1]
            )
            torch.testing.assert_close(logits[0, :, y, xx], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "factor", "message"),
    [
        ("fcn16s", 2, "needs an FCN-32s on VGG16, got fcn16s on vgg16"),
        ("fcn32s", 3, "factor 3: must divide the output stride 32"),
        ("fcn32s", 64, "factor 64: must divide"),
    ],
    ids=["16s", "three", "sixty-four"],
)
def test_nets_and_factors_it_cannot_use_are_named(arch: str, factor: int, message: str) -> None:
    with pytest.raises(ShiftStitchError, match=message):
        shift_and_stitch(build_fcn(ModelSpec(arch, 3, TINY)), factor)
