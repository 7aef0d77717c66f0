"""The networks: exact output size for every input size, reference parameter counts,
bilinear upsampling, frozen kernels, the at-once scales and the reference names."""

from __future__ import annotations

import pytest
import torch

from model.nets.fcn import (
    ARCHS,
    FCN,
    NETWORKS,
    FCN8sAtOnce,
    FCN16s,
    FCN32s,
    ModelSpec,
    bilinear_kernel,
    build_fcn,
    crop,
    scaled,
)

TINY = 1 / 32  # conv1 2 channels ... fc 128: the full topology at CPU-test cost

# Every height and every width from 1 to 64 (each paired with another), then large odd sizes.
SIZES = (
    [(s, s) for s in range(1, 65)]
    + [(s, 65 - s) for s in range(1, 65)]
    + [(375, 500), (500, 375), (333, 1001), (500, 500)]
)


def tiny(arch: str, num_classes: int = 5) -> FCN:
    torch.manual_seed(0)
    net = build_fcn(ModelSpec(arch, num_classes, TINY)).eval()
    # Non-zero scores, so shapes and crops are exercised on real values.
    for name in ("score_fr", *net.skip_layers):
        torch.nn.init.normal_(getattr(net, name).weight)
    return net


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_output_matches_input_size_for_every_size(arch: str) -> None:
    net = tiny(arch)
    with torch.no_grad():
        for h, w in SIZES:
            logits = net(torch.randn(1, 3, h, w))
            assert logits.shape == (1, 5, h, w), f"{arch} at {h}x{w}"
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("fcn32s", 134_346_581),
        ("fcn16s", 134_357_354),
        ("fcn8s", 134_362_751),
        ("fcn8s-atonce", 134_362_751),
    ],
)
def test_full_width_learnable_parameter_counts_match_the_reference(
    arch: str, expected: int
) -> None:
    with torch.device("meta"):
        net = build_fcn(ModelSpec(arch, 21))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


def test_full_width_layer_shapes_follow_the_reference() -> None:
    with torch.device("meta"):
        net = FCN32s(21)
    assert net.conv1_1.padding == (100, 100)
    assert net.conv5_3.weight.shape == (512, 512, 3, 3)
    assert net.fc6.weight.shape == (4096, 512, 7, 7)
    assert net.fc6.padding == (0, 0)
    assert net.fc7.weight.shape == (4096, 4096, 1, 1)
    assert net.score_fr.weight.shape == (21, 4096, 1, 1)
    assert net.upscore.weight.shape == (21, 21, 64, 64)
    assert net.upscore.stride == (32, 32)
    assert net.upscore.bias is None


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_names_are_the_reference_layer_names(arch: str) -> None:
    expected = {
        "fcn32s": {"upscore"},
        "fcn16s": {"score_pool4", "upscore2", "upscore16"},
        "fcn8s": {"score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8"},
        "fcn8s-atonce": {
            "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8",
            "scale_pool4", "scale_pool3",
        },
    }[arch]  # fmt: skip
    trunk = {
        f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
    }
    layers = {key.rsplit(".", 1)[0] for key in build_fcn(ModelSpec(arch, 3, TINY)).state_dict()}
    assert layers == trunk | {"fc6", "fc7", "score_fr"} | expected


def test_bilinear_kernel_equals_the_closed_form() -> None:
    assert bilinear_kernel(4)[0].tolist() == pytest.approx([0.0625, 0.1875, 0.1875, 0.0625])
    one_d = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear_kernel(4), torch.outer(one_d, one_d))
    # k = 2f: 1 - |i - (f - 0.5)| / f for every even size the networks use.
    for size in (4, 16, 32, 64):
        f = size // 2
        ramp = torch.tensor([1 - abs(i - (f - 0.5)) / f for i in range(size)])
        assert torch.allclose(bilinear_kernel(size), torch.outer(ramp, ramp))
    # Odd sizes centre on a pixel: k=3 gives .5, 1, .5.
    assert bilinear_kernel(3)[1].tolist() == pytest.approx([0.5, 1.0, 0.5])


@pytest.mark.parametrize("arch", ARCHS)
def test_upsampling_starts_bilinear_on_the_channel_diagonal_and_frozen(arch: str) -> None:
    net = build_fcn(ModelSpec(arch, 3, TINY))
    for name in net.upsampling_layers:
        weight = getattr(net, name).weight
        k = weight.shape[-1]
        assert not weight.requires_grad, name
        for i in range(3):
            for j in range(3):
                expected = bilinear_kernel(k) if i == j else torch.zeros(k, k)
                assert torch.equal(weight[i, j], expected), (name, i, j)
    learnable = build_fcn(ModelSpec(arch, 3, TINY, learn_upsampling=True))
    assert all(getattr(learnable, n).weight.requires_grad for n in learnable.upsampling_layers)


def test_upscore_interpolates_a_constant_map_to_a_constant_interior() -> None:
    net = FCN32s(2, width=TINY)
    coarse = torch.ones(1, 2, 4, 4)
    fine = net.upscore(coarse)
    assert fine.shape == (1, 2, 160, 160)
    # Away from the border every output pixel gets weights summing to one.
    assert torch.allclose(fine[..., 32:-32, 32:-32], torch.ones(1, 2, 96, 96))


@pytest.mark.parametrize("arch", ARCHS)
def test_score_layers_start_at_zero(arch: str) -> None:
    net = build_fcn(ModelSpec(arch, 4, TINY)).eval()
    for name in ("score_fr", *net.skip_layers):
        layer = getattr(net, name)
        assert not layer.weight.any()
        assert not layer.bias.any()
    with torch.no_grad():
        assert not net(torch.randn(1, 3, 20, 30)).any()


def test_crop_is_a_fixed_offset_slice_not_a_centre_crop() -> None:
    x = torch.arange(100.0).view(1, 1, 10, 10)
    like = torch.zeros(1, 1, 3, 4)
    assert torch.equal(crop(x, 5, like), x[:, :, 5:8, 5:9])


def test_at_once_scales_pool4_and_pool3_before_scoring() -> None:
    net = FCN8sAtOnce(3, width=TINY)
    assert torch.all(net.scale_pool4 == 0.01)
    assert torch.all(net.scale_pool3 == 0.0001)
    assert net.scale_pool4.shape == (scaled(512, TINY),)
    # Buffers, not parameters: fixed, saved in the state dict, never trained.
    names = {n for n, _ in net.named_parameters()}
    assert "scale_pool4" not in names
    assert "scale_pool4" in net.state_dict()

    # With identical weights, the at-once net equals the staged one fed scaled features.
    torch.manual_seed(1)
    staged = NETWORKS["fcn8s"](3, width=TINY).eval()
    for name in ("score_fr", "score_pool4", "score_pool3"):
        torch.nn.init.normal_(getattr(staged, name).weight)
    at_once = FCN8sAtOnce(3, width=TINY).eval()
    at_once.load_state_dict(staged.state_dict(), strict=False)
    with torch.no_grad():
        staged.score_pool4.weight.mul_(0.01)
        staged.score_pool3.weight.mul_(0.0001)
        x = torch.randn(1, 3, 45, 61)
        assert torch.allclose(at_once(x), staged(x), atol=1e-5)


def test_dropout_is_elementwise_and_only_in_training() -> None:
    net = FCN16s(3, width=TINY)
    assert type(net.drop6) is torch.nn.Dropout
    assert net.drop6.p == 0.5
    torch.nn.init.normal_(net.score_fr.weight)
    x = torch.randn(1, 3, 40, 40)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize(("num_classes", "width"), [(1, 1.0), (21, 0.0), (21, -1.0)])
def test_invalid_construction_is_refused(num_classes: int, width: float) -> None:
    with pytest.raises(ValueError, match="num_classes|width"):
        FCN32s(num_classes, width=width)


def test_unknown_architecture_names_the_choices() -> None:
    with pytest.raises(ValueError, match="fcn8s-atonce"):
        build_fcn(ModelSpec("fcn4s", 21))


def test_width_multiplier_scales_every_channel_count() -> None:
    net = FCN8sAtOnce(7, width=0.25)
    assert net.conv1_1.out_channels == 16
    assert net.conv3_3.out_channels == 64
    assert net.conv5_3.out_channels == 128
    assert net.fc6.out_channels == 1024
    assert net.score_pool3.in_channels == 64
    assert net.score_fr.out_channels == 7


def test_batches_and_many_classes() -> None:
    net = tiny("fcn8s", num_classes=300)
    images = torch.randn(3, 3, 17, 23)
    with torch.no_grad():
        logits = net(images)
        alone = net(images[1:2])
    assert logits.shape == (3, 300, 17, 23)
    # Each image of a batch is scored as it would be alone.
    assert torch.allclose(logits[1:2], alone, atol=1e-5)
