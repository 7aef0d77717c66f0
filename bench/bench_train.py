"""Training throughput (images/s) of one SGD step: normalise, forward, loss, backward, update.

Two regimes side by side, on synthetic VOC-layout images of one size:
  sum   the reference: pixel-summed loss, batch 1 at native size
  mean  per-pixel mean loss, batches of fixed-size crops (here: the full image)
plus the whole ``train()`` loop (data loading, logging) for the mean regime. Ratios are
against the first row, measured in the same run.

    python bench/bench_train.py --size 128 --width 0.125 --archs fcn32s fcn8s
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import TORCHVISION, Normalize
from model.training.config import TrainConfig
from model.training.runlog import LOG
from model.training.solver import make_optimizer, segmentation_loss
from model.training.train import train


def step_rate(
    arch: str,
    width: float,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str,
    batch: int,
    steps: int,
) -> float:
    """Median images/s over ``steps`` timed steps (after two warm-up steps)."""
    torch.manual_seed(0)
    net = build_fcn(ModelSpec(arch, len(SYNTH_CLASSES), width)).train()
    normalize = Normalize(TORCHVISION)
    lr = 1e-10 if loss == "sum" else 1e-4
    optimizer = make_optimizer(net, "sgd", lr, momentum=0.99, weight_decay=5e-4, bias_lr_mult=2.0)
    times: list[float] = []
    for i in range(steps + 2):
        index = torch.arange(i * batch, (i + 1) * batch) % len(images)
        start = time.perf_counter()
        logits = net(normalize(images[index]))
        value = segmentation_loss(logits, targets[index].long(), loss)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(value)
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def loop_rate(data: Path, arch: str, width: float, batch: int, iters: int) -> float:
    """images/s of ``train()`` itself (workers 0, no validation until the end), from its log."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            arch=arch, width=width, init="none", data=str(data), loss="mean", batch_size=batch,
            max_iter=iters, val_every=iters, log_every=max(iters // 2, 1), workers=0, out=out,
            progress=False, check_data=False,
        )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):  # train()'s own progress lines
            train(config)
        records = [json.loads(line) for line in (Path(out) / LOG).read_text().splitlines()]
    # The second window: past the first steps' warm-up.
    return float([r for r in records if r["split"] == "train"][-1]["images_per_s"])


def cpu_name() -> str:
    """The CPU model (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="square image side (default: 128)")
    parser.add_argument(
        "--width", type=float, default=0.125, help="width multiplier (default: 1/8)"
    )
    parser.add_argument("--archs", nargs="+", default=["fcn32s", "fcn8s"])
    parser.add_argument(
        "--batch", type=int, default=8, help="batch of the mean regime (default: 8)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default: 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "synth", 2 * args.batch, 1, (args.size, args.size))
        dataset = voc_dataset(data, "train")
        pairs = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([p[0] for p in pairs])
        targets = torch.stack([p[1] for p in pairs])

        print(
            f"# {cpu_name()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; {args.size}x{args.size} images, width {args.width:g}"
        )
        print(f"{'arch':<8} {'regime':<28} {'images/s':>9} {'ratio':>6}")
        baseline = None
        for arch in args.archs:
            rows = [
                (
                    "sum, batch 1",
                    step_rate(
                        arch, args.width, images, targets, loss="sum", batch=1, steps=args.steps
                    ),
                ),
                (
                    f"mean, batch {args.batch}",
                    step_rate(
                        arch,
                        args.width,
                        images,
                        targets,
                        loss="mean",
                        batch=args.batch,
                        steps=args.steps,
                    ),
                ),
                (
                    f"mean, batch {args.batch}, train() loop",
                    loop_rate(data, arch, args.width, args.batch, 2 * args.steps),
                ),
            ]
            for regime, rate in rows:
                baseline = baseline or rate
                print(f"{arch:<8} {regime:<28} {rate:9.1f} {rate / baseline:6.2f}")


if __name__ == "__main__":
    main()
