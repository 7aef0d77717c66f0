"""Table 1 of the paper, our networks beside it: FCN-32s on VGG16, AlexNet (Caffe's and
torchvision's) and GoogLeNet at full width: parameters, receptive field, forward time at
500x500, each as measured here and as the paper reports it, with the ratio to VGG16.

    python bench/bench_table1.py [--repeats 3] [--size 500] [--device cpu] [--threads N]

Receptive field: measured exactly by NaN propagation (one NaN input row reaches every
score_fr unit whose field holds it, through convolutions, pools and zero weights alike), on
a tiny-width copy: the field does not depend on channel counts. "context" is the label's
(upsampling included, ``net.context``). The paper's times are on a GPU (Caffe, NVIDIA
Tesla K40c); ours on whatever ``--device`` names, so compare the ratios, not the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.nets.base import FCNBase, ModelSpec, build_fcn


@dataclass(frozen=True)
class Row:
    """One net of Table 1 and the paper's figures for it."""

    label: str
    backbone: str
    arch: str
    paper_mean_iu: float
    paper_params_m: float
    paper_rf: int
    paper_ms: float


# Table 1 (FCN-32s on each, PASCAL VOC 2011 val; forward time for a 500x500 input).
ROWS = (
    Row("FCN-AlexNet (Caffe)", "caffe-alexnet", "fcn32s", 39.8, 57, 355, 50),
    Row("FCN-AlexNet (torchvision)", "alexnet", "fcn32s", 39.8, 57, 355, 50),
    Row("FCN-VGG16", "vgg16", "fcn32s", 56.0, 134, 404, 210),
    Row("FCN-GoogLeNet", "googlenet", "fcn32s", 42.5, 6, 907, 59),
)
BASELINE = "vgg16"
# The tiny width the receptive field is measured at, and how far either side of the
# centre unit it looks (more than any field here).
RF_WIDTH = 1 / 32
RF_REACH = 300


def learnable_parameters(backbone: str, arch: str) -> int:
    """Parameters that train at full width (the frozen bilinear upsampling excluded)."""
    with torch.device("meta"):
        net = build_fcn(ModelSpec(arch, 21, backbone=backbone))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def receptive_field(backbone: str, arch: str) -> int:
    """Input rows one interior score_fr unit depends on: a NaN at row p reaches the unit
    exactly when p is in its field, so scanning p over rows gives the field."""
    net = build_fcn(ModelSpec(arch, 3, RF_WIDTH, backbone=backbone)).eval()
    scores: list[Tensor] = []
    score_fr = net.get_submodule("score_fr")
    score_fr.register_forward_hook(lambda _m, _i, out: scores.append(out))
    rows = 2 * RF_REACH + 1
    with torch.no_grad():
        net(torch.zeros(1, 3, rows, 1))
        unit = scores.pop().shape[2] // 2  # the coarse map's middle row
        field = []
        for start in range(0, rows, 64):  # [B, 3, rows, 1], one NaN row each
            batch = torch.zeros(min(64, rows - start), 3, rows, 1)
            for i in range(batch.shape[0]):
                batch[i, :, start + i] = float("nan")
            net(batch)
            reached = scores.pop()[:, :, unit].isnan().flatten(1).any(1)
            field += [start + i for i in reached.nonzero().flatten().tolist()]
    if not field or field[0] == 0 or field[-1] == rows - 1:
        raise RuntimeError(f"{backbone}: receptive field not inside {rows} rows")
    if field != list(range(field[0], field[-1] + 1)):
        raise RuntimeError(f"{backbone}: receptive field has holes")
    return len(field)


def forward_ms(net: FCNBase, size: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds of one forward pass on a size x size image (after a warm-up)."""
    x = torch.randn(1, 3, size, size, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run is the warm-up
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--size", type=int, default=500, help="side of the timed square image")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    measured = {}
    for row in ROWS:
        net = build_fcn(ModelSpec(row.arch, 21, backbone=row.backbone)).eval().to(device)
        measured[row.backbone] = (
            learnable_parameters(row.backbone, row.arch),
            receptive_field(row.backbone, row.arch),
            net.context,
            forward_ms(net, args.size, args.repeats, device),
        )
        del net
    base = next(r for r in ROWS if r.backbone == BASELINE)
    base_params, _, _, base_ms = measured[BASELINE]

    where = "CUDA " + torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"FCN-32s, 21 classes, full width; forward {args.size}x{args.size} on {where} "
        f"({torch.get_num_threads()} threads), median of {args.repeats}; torch {torch.__version__}"
    )
    print("ours / paper; ratios are to FCN-VGG16 of the same column\n")
    header = (
        f"{'net':26} {'mean IU':>7} {'params M':>15} {'x VGG':>11} {'RF px':>11} "
        f"{'context':>7} {'forward ms':>15} {'x VGG':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in ROWS:
        params, rf, context, ms = measured[row.backbone]
        print(
            f"{row.label:26} {row.paper_mean_iu:7.1f} "
            f"{params / 1e6:7.2f} / {row.paper_params_m:<5g} "
            f"{params / base_params:5.3f}/{row.paper_params_m / base.paper_params_m:<5.3f} "
            f"{rf:4d} / {row.paper_rf:<4d} {context:7d} "
            f"{ms:7.0f} / {row.paper_ms:<5g} "
            f"{ms / base_ms:5.2f}/{row.paper_ms / base.paper_ms:<5.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
