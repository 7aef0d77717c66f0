"""The paper's ablations, at toy scale on the synthetic set, beside the paper's figures.

  nets      FCN-32s-fixed (score layer only), FCN-32s, FCN-32s by shift-and-stitch (no
            retraining, as section 3.2 offers it), FCN-16s (from the 32s) and FCN-8s (from
            the 16s), staged as the paper trains them: mean IU side by side (Table 2).
  sampling  FCN-32s with loss sampling 0.25 / 0.5 / 1.0 (section 4.3, Figure 5): wall time
            to a fixed iteration count, the training loss at its end, validation loss and
            mean IU.

Every figure is measured in this run; ratios are against FCN-32s (nets) and against
sampling 1.0 (sampling). The recipe is models/demo/build.sh's, which is known to learn on
this data (400 + 100 images of 160x160, width 1/8, mean loss, AdamW at 1e-3, batch 8,
flips, seed 0); at fewer steps or a smaller set every net predicts all background and
nothing ranks. The trunks start random (no ImageNet here), so FCN-32s-fixed is a fixed
RANDOM trunk: the paper's 32s-fixed kept ImageNet features, so here the row measures what
training the trunk adds, not what fine-tuning adds. ``--check-f32`` also verifies that
F = 32 shift-and-stitch on shifted inputs equals the rarefied net's dense output (1024
passes of the net).

    python bench/bench_ablations.py              # ~40 minutes on 2 CPU cores (~1 s a step)
    python bench/bench_ablations.py --scale 2    # 2x every step count
    python bench/bench_ablations.py --steps32 1000 --steps-staged 500  # the demo's counts
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.data.synthetic import write_synthetic
from model.evaluation.evaluate import evaluate
from model.training.config import TrainConfig
from model.training.runlog import LAST, LOG

# Table 2 of the paper (PASCAL VOC 2011 val subset), mean IU %; section 3.2 reports no
# shift-and-stitch figure for the final nets ("we do not use it"), hence "-".
PAPER_MEAN_IU = {
    "fcn32s-fixed": "45.4",
    "fcn32s": "59.4",
    "fcn32s + shift-and-stitch": "-",
    "fcn16s": "62.4",
    "fcn8s": "62.7",
}
PAPER_SAMPLING = (
    "Figure 5: sampling (p = 0.25, 0.5) converges no faster per iteration than whole images "
    "and takes longer in wall time per image seen"
)


def run(config: TrainConfig) -> tuple[float, Path]:
    """Train quietly; the wall time and the run's folder."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from model.training.train import train

        train(config)
    return time.perf_counter() - start, Path(config.out)


def last_losses(out: Path) -> tuple[float, float | None, float]:
    """The last logged training loss, the last validation loss, and the seconds per
    iteration between the first and last training log lines (no setup, no validation)."""
    import json

    records = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r["loss"] for r in records if r["split"] == "val"]
    steps = train[-1]["iteration"] - train[0]["iteration"]
    per_step = (train[-1]["time"] - train[0]["time"]) / max(1, steps)
    return float(train[-1]["loss"]), (float(val[-1]) if val else None), per_step


def check_f32(width: float) -> float:
    """Max |shifted - rarefied| over the whole F = 32 dense map of an FCN-32s."""
    from model.nets.fcn import ModelSpec, build_fcn
    from model.nets.shift_stitch import shift_and_stitch

    torch.manual_seed(0)
    net = build_fcn(ModelSpec("fcn32s", 3, width)).eval()
    score_fr = net.score_fr
    assert isinstance(score_fr, torch.nn.Conv2d)
    torch.nn.init.normal_(score_fr.weight, std=0.3)
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        a, _ = shift_and_stitch(net, 32).dense_scores(x)
        b, _ = shift_and_stitch(net, 32, "shift").dense_scores(x)
    return float((a - b).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="every step count x this")
    parser.add_argument("--steps32", type=int, default=400, help="FCN-32s and 32s-fixed steps")
    parser.add_argument(
        "--steps-staged", type=int, default=250, help="FCN-16s and FCN-8s steps, each"
    )
    parser.add_argument(
        "--steps-sample", type=int, default=150, help="steps of each loss-sampling run"
    )
    parser.add_argument("--train", type=int, default=400, help="synthetic training images")
    parser.add_argument("--val", type=int, default=100, help="synthetic validation images")
    parser.add_argument("--size", type=int, default=160, help="synthetic image side")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW, every stage")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shift-factor", type=int, default=4, help="shift-and-stitch F")
    parser.add_argument("--check-f32", action="store_true", help="also the F = 32 equality")
    args = parser.parse_args()

    def steps(n: int) -> int:
        return max(4, round(n * float(args.scale)))

    iters32, staged, sample = (
        steps(args.steps32),
        steps(args.steps_staged),
        steps(args.steps_sample),
    )
    # Rows print as each run ends (flushed), so a run cut short still reports its part.
    say = functools.partial(print, flush=True)
    say(
        f"synthetic {args.size}x{args.size}, {args.train} train / {args.val} val images, "
        f"width {args.width:g}, mean loss, AdamW lr {args.lr:g}, batch {args.batch_size}, "
        f"flips, seed 0; {iters32} iterations for 32s and 32s-fixed (16s, 8s: {staged} more "
        f"each, staged); shift-and-stitch F = {args.shift_factor} on the trained 32s; "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    say(
        "fcn32s-fixed trains only the score layers over a RANDOM trunk (no ImageNet here; "
        "the paper's kept ImageNet features): it measures what training the trunk adds"
    )
    say()
    say("| net | iterations | wall s | mean IU % | vs 32s | pixel acc % | paper mean IU % |")
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    reference: list[float] = []

    def row(name: str, wall: float, metrics: dict[str, float], its: int) -> None:
        reference.append(metrics["mean_iu"])
        say(
            f"| {name} | {its or '(eval)'} | {wall:.1f} | {100 * metrics['mean_iu']:.1f} | "
            f"{metrics['mean_iu'] / reference[0]:.2f}x | {100 * metrics['pixel_accuracy']:.1f} | "
            f"{PAPER_MEAN_IU[name]} |"
        )

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = (args.size, args.size)
        data = write_synthetic(root / "synth", args.train, args.val, size, seed=0)
        base = TrainConfig(
            arch="fcn32s", width=args.width, init="none", data=str(data), loss="mean",
            optimizer="adamw", lr=args.lr, batch_size=args.batch_size, flip=True, seed=0,
            max_iter=iters32, val_every=iters32, log_every=max(1, iters32 // 12), workers=0,
            out=str(root / "fcn32s"), progress=False, check_data=False,
        )  # fmt: skip

        wall, out = run(base)
        ckpt32 = out / LAST
        row("fcn32s", wall, load_checkpoint(ckpt32).metrics, iters32)
        wall, out = run(replace(base, score_only=True, out=str(root / "fixed")))
        row("fcn32s-fixed", wall, load_checkpoint(out / LAST).metrics, iters32)
        begin = time.perf_counter()
        stitched = evaluate(
            ckpt32, data, workers=0, check_data=False, shift_and_stitch=args.shift_factor
        )
        wall = time.perf_counter() - begin
        row("fcn32s + shift-and-stitch", wall, stitched.metrics.summary(), 0)
        staged16 = replace(
            base, arch="fcn16s", init=f"checkpoint:{ckpt32}", max_iter=staged,
            val_every=staged, log_every=max(1, staged // 6), out=str(root / "fcn16s"),
        )  # fmt: skip
        wall, out = run(staged16)
        row("fcn16s", wall, load_checkpoint(out / LAST).metrics, staged)
        staged8 = replace(
            staged16, arch="fcn8s", init=f"checkpoint:{out / LAST}", out=str(root / "fcn8s")
        )
        wall, out = run(staged8)
        row("fcn8s", wall, load_checkpoint(out / LAST).metrics, staged)

        # Each p from scratch at its own (shorter) step count, 1.0 first (the baseline), so
        # that the three runs compare at the same iteration.
        say()
        say(
            f"loss sampling, each from scratch for {sample} iterations (the recipe above); "
            "wall s is the whole run, validation included"
        )
        say()
        say(
            "| loss sample | s / iteration | wall s | vs 1.0 | last train loss "
            "| val loss | mean IU % |"
        )
        say("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        sampled = replace(base, max_iter=sample, val_every=sample, log_every=max(1, sample // 6))
        full: list[float] = []
        for p in (1.0, 0.5, 0.25):
            wall, out = run(replace(sampled, loss_sample=p, out=str(root / f"sample{p}")))
            train_loss, val_loss, per_step = last_losses(out)
            full.append(per_step)
            metrics = load_checkpoint(out / LAST).metrics
            val = "-" if val_loss is None else f"{val_loss:.4f}"
            say(
                f"| {p:g} | {per_step:.3f} | {wall:.1f} | {per_step / full[0]:.2f}x | "
                f"{train_loss:.4f} | {val} | {100 * metrics['mean_iu']:.1f} |"
            )
        say()
        say(f"paper, {PAPER_SAMPLING}")
        if args.check_f32:
            f32 = check_f32(1 / 32)
            say(f"F = 32: max |shifted inputs - rarefied net| over the dense map: {f32:.3g}")


if __name__ == "__main__":
    main()
