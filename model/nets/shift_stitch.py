"""Shift-and-stitch (paper, section 3.2): dense predictions from a coarse FCN-32s at output
stride 32 / F, without training, two ways that give the same numbers.

``shift``: run the net on the input shifted by (x, y) = s (i, j), s = 32 / F, for every
0 <= i, j < F, and interleave the F^2 coarse score maps. ``rarefy``: the paper's
equivalence, the "a trous" trick: the last log2(F) max pools take stride 1 (their window
dilated), and every later filter is dilated by the stride taken away, so one pass of the
rarefied net yields the interleaved map directly.

Either way the result is a dense score map at stride s, interpolated bilinearly (a
transposed convolution of kernel 2s, stride s, as the net's own 64/32 upsampling) to the
input's size. For F > 1 the input is framed on the top and left by ``net.context`` pixels of
zero (the mean colour once normalised, as conv1_1's own padding): a shift drops the first
s i rows of the frame, and without it every shifted copy would see a border of its own, so
the two ways would differ within a receptive field of the top-left corner. F = 1 is the net.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from model.nets.base import OUTPUT_STRIDE, FCNBase, bilinear_kernel
from model.nets.fcn import VGG16_LAYERS, FCN32s

FACTORS = (1, 2, 4, 8, 16, 32)
METHODS = ("rarefy", "shift")
# Where score cell 0 of the plain net centres, in input pixels: the bilinear upscore's
# kernel peaks at 31.5 and the reference crops 19 (cell i: 32 i + 12.5).
CELL0_CENTER = 12.5


class ShiftStitchError(ValueError):
    """A net or factor shift-and-stitch cannot use; the message names it."""


def check_factor(factor: int) -> int:
    """``factor`` if it divides the output stride 32 (1, 2, 4, ..., 32)."""
    if factor not in FACTORS:
        raise ShiftStitchError(
            f"shift-and-stitch factor {factor}: must divide the output stride 32 "
            f"({', '.join(map(str, FACTORS))})"
        )
    return factor


class ShiftAndStitch(nn.Module):
    """``net`` (an FCN-32s on VGG16) at output stride 32 / ``factor``, with the FCN contract:
    a preprocessed float image [N, 3, H, W] in, logits [N, C, H, W] out, any H, W >= 1."""

    def __init__(self, net: FCNBase, factor: int, method: str = "rarefy"):
        super().__init__()
        if not isinstance(net, FCN32s):
            raise ShiftStitchError(
                f"shift-and-stitch needs an FCN-32s on VGG16, got {net.arch} on {net.backbone} "
                "(the skips of 16s/8s already refine the stride; other trunks are not wired)"
            )
        if method not in METHODS:
            raise ShiftStitchError(f"shift-and-stitch method {method!r}: use rarefy or shift")
        self.net = net
        self.num_classes = net.num_classes
        self.factor = check_factor(factor)
        self.method = method
        self.stride = OUTPUT_STRIDE // factor
        self.margin = 0 if factor == 1 else net.context
        upsample = bilinear_kernel(2 * self.stride)[None, None]  # [1, 1, 2s, 2s]
        self.register_buffer("upsample", upsample.repeat(net.num_classes, 1, 1, 1), False)

    upsample: Tensor

    def forward(self, x: Tensor) -> Tensor:
        if self.factor == 1:
            return self.net(x)  # type: ignore[no-any-return]
        scores, offset = self.dense_scores(x)
        return self.interpolate(scores, offset, x)

    def interpolate(self, scores: Tensor, offset: int, like: Tensor) -> Tensor:
        """Logits at the size of ``like`` from ``dense_scores``: bilinear upsampling by s."""
        s = self.stride
        logits = F.conv_transpose2d(scores, self.upsample, stride=s, groups=scores.shape[1])
        return logits[:, :, offset : offset + like.shape[-2], offset : offset + like.shape[-1]]

    def dense_scores(self, x: Tensor) -> tuple[Tensor, int]:
        """The stitched score map [N, C, h, w] at stride s, from the first cell whose
        interpolation reaches the input, and the crop offset that puts its bilinear
        upsampling (kernel 2s, stride s) on the input's pixels."""
        frame = F.pad(x, (self.margin, 0, self.margin, 0))
        dense = self._rarefied(frame) if self.method == "rarefy" else self._shifted(frame)
        s = self.stride
        # Cell j of the dense map centres on input pixel s j + CELL0_CENTER - margin: keep
        # from the last cell centred at or above pixel 0 (centre in (-s, 0]) on. The map
        # runs past the last pixel (conv1_1's padding), and the final crop ends it.
        first = math.floor((self.margin - CELL0_CENTER) / s)
        centre = s * first + CELL0_CENTER - self.margin
        offset = int(s - 0.5 - centre)  # the kernel peaks at s - 0.5 after cell 0
        return dense[:, :, first:, first:], offset

    def _shifted(self, frame: Tensor) -> Tensor:
        """F^2 passes of the net on the frame shifted by (s i, s j), interleaved."""
        f, s = self.factor, self.stride
        maps = [
            [self.net.score(self.net.trunk(frame[:, :, s * i :, s * j :])[2]) for j in range(f)]
            for i in range(f)
        ]
        n, c = maps[0][0].shape[:2]
        height = sum(maps[i][0].shape[-2] for i in range(f))
        width = sum(maps[0][j].shape[-1] for j in range(f))
        dense = maps[0][0].new_zeros(n, c, f * maps[0][0].shape[-2], f * maps[0][0].shape[-1])
        for i in range(f):
            for j in range(f):
                coarse = maps[i][j]
                dense[:, :, i::f, j::f][:, :, : coarse.shape[-2], : coarse.shape[-1]] = coarse
        return dense[:, :, :height, :width]

    def _rarefied(self, frame: Tensor) -> Tensor:
        """One pass of the rarefied net: the last log2(F) pools at stride 1, later filters
        dilated by the stride removed before them."""
        net = self.net
        stride_one = len([p for p in VGG16_LAYERS if p is None]) - round(math.log2(self.factor))
        dilation, pools = 1, 0
        h = frame
        for layer in VGG16_LAYERS:
            if layer is None:
                if pools < stride_one:
                    h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
                else:
                    # Caffe's ceil-mode windows past the end hold one row: pad with -inf.
                    h = F.pad(h, (0, dilation, 0, dilation), value=-math.inf)
                    h = F.max_pool2d(h, kernel_size=2, stride=1, dilation=dilation)
                    dilation *= 2
                pools += 1
                continue
            conv: nn.Conv2d = getattr(net, layer[0])
            h = F.relu(_dilated(conv, h, dilation))
        h = net.drop6(F.relu(_dilated(net.fc6, h, dilation)))
        h = net.drop7(F.relu(net.fc7(h)))
        return net.score_fr(h)  # type: ignore[no-any-return]


def _dilated(conv: nn.Conv2d, x: Tensor, dilation: int) -> Tensor:
    """``conv`` with its filter rarefied by ``dilation`` (and its padding spread alike)."""
    padding = conv.padding
    assert isinstance(padding, tuple)
    return F.conv2d(
        x,
        conv.weight,
        conv.bias,
        padding=tuple(p * dilation for p in padding),
        dilation=dilation,
    )


def shift_and_stitch(net: FCNBase, factor: int, method: str = "rarefy") -> ShiftAndStitch:
    """``net`` at output stride 32 / ``factor`` (see the module); ``rarefy`` is one pass and
    exports to ONNX as it is, ``shift`` runs the net F^2 times."""
    return ShiftAndStitch(net, factor, method)


__all__ = ["FACTORS", "ShiftAndStitch", "ShiftStitchError", "check_factor", "shift_and_stitch"]
