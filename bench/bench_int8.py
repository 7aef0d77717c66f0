"""int8 against fp32 on ONNX Runtime's CPU provider, same process, side by side:

1. speed: the full-width FCN-8s (random weights, exported by the project's exporter, then
   quantized by ``fcn export --int8``'s code on synthetic images) on one H x W image;
2. accuracy: the bundled demo model quantized on its own training images (regenerated from
   models/demo/recipe.json) and both scored on its validation images.

    python bench/bench_int8.py [--size 375x500] [--runs 3] [--calibration-count 8]
                               [--demo-calibration-count 64] [--skip-speed] [--skip-demo]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_onnx import load_seconds, peak_rss_gb, random_checkpoint
from model.data.synthetic import write_synthetic
from model.export.exporter import export_model
from model.export.quantize import VALIDATION_SPLITS, compare, image_set, quantize_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
# The goals of issue 16: int8 at least twice fp32's throughput, within 0.5 mean IU points.
SPEEDUP_GOAL = 2.0
MEAN_IU_GOAL_POINTS = 0.5


def cpu_line() -> str:
    """The CPU model and whether it has the int8 dot-product instructions ORT's kernels use."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} CPUs (no /proc/cpuinfo)"
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if "flags" in ln), [])
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2") if f in flags]
    return f"{name}, {os.cpu_count()} CPUs visible; {' '.join(found) or 'no AVX2/VNNI'}"


def times(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds of each of ``runs`` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def speed(args: argparse.Namespace, tmp: Path) -> None:
    height, width = (int(v) for v in args.size.split("x"))
    checkpoint = random_checkpoint("fcn8s", 1.0)
    fp32 = tmp / "fcn8s-fp32.onnx"
    result = export_model(checkpoint, fp32, verify=False)
    print(f"exported fp32 FCN-8s width 1.0 in {result.export_seconds:.0f} s")
    del checkpoint
    data = write_synthetic(tmp / "calibration", args.calibration_count, 1, (height, width), seed=0)
    # The images only (a plain folder): the random net has VOC's 21 classes, not synth's 6.
    calibration = image_set(data / "JPEGImages", count=args.calibration_count)
    int8 = quantize_file(fp32, tmp / "fcn8s-int8.onnx", calibration)
    print(f"quantized in {int8.seconds:.0f} s on {len(calibration)} synthetic {args.size} images")

    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    photo = calibration.load(0)[0][None]
    rows = []
    labels = {}
    for name, path in (("fp32", fp32), ("int8", int8.path)):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        took = times(functools.partial(session.run, None, {"image": image}), args.runs)
        labels[name] = (
            session.run(None, {"image": image})[0],
            session.run(None, {"image": photo})[0],
        )
        rows.append((name, path.stat().st_size, load_seconds(path), took))
        del session
    print(f"\n1 image {height}x{width} (H x W), batch 1, {args.runs} timed runs after a warm-up:")
    print(f"{'':5} {'file MB':>8} {'load s':>7} {'median ms':>10} {'min ms':>8} {'images/s':>9}")
    for name, size, load_s, took in rows:
        med = statistics.median(took)
        print(
            f"{name:5} {size / 1e6:8.1f} {load_s:7.2f} {med * 1000:10.0f} "
            f"{min(took) * 1000:8.0f} {1 / med:9.2f}"
        )
    ratio = statistics.median(rows[0][3]) / statistics.median(rows[1][3])
    verdict = "goal met" if ratio >= SPEEDUP_GOAL else "goal missed"
    print(f"int8 / fp32 throughput: {ratio:.2f}x (goal >= {SPEEDUP_GOAL:.0f}x: {verdict})")
    print(f"int8 / fp32 file size: {rows[1][1] / rows[0][1]:.3f}")
    noise = float((labels["fp32"][0] == labels["int8"][0]).mean())
    synth = float((labels["fp32"][1] == labels["int8"][1]).mean())
    print(
        f"labels agree (random weights): {noise:.2%} on the noise image, "
        f"{synth:.2%} on a synthetic (calibration) one"
    )


def demo(args: argparse.Namespace, tmp: Path) -> None:
    model = DEMO / "fcn8s.onnx"
    recipe = json.loads((DEMO / "recipe.json").read_text())
    spec = recipe["data"]
    w, h = (int(v) for v in spec["size"].split("x"))
    data = write_synthetic(tmp / "demo", spec["train"], spec["val"], (h, w), seed=spec["seed"])
    calibration = image_set(data, count=args.demo_calibration_count)
    int8 = quantize_file(model, tmp / "demo-int8.onnx", calibration)
    print(f"\ndemo model {model.relative_to(ROOT)}: quantized in {int8.seconds:.1f} s on "
          f"{len(calibration)} of its {spec['train']} training images")  # fmt: skip
    comparison = compare(model, int8.path, image_set(data, default_splits=VALIDATION_SPLITS))
    print(comparison)
    assert comparison.fp32 is not None
    assert comparison.int8 is not None
    recorded = recipe["mean_iu"]["fcn8s"]
    print(f"  (fp32 mean IU recorded in recipe.json: {100 * recorded:.2f})")
    delta = 100 * abs(comparison.int8.mean_iu - comparison.fp32.mean_iu)
    verdict = "goal met" if delta <= MEAN_IU_GOAL_POINTS else "goal missed"
    print(
        f"  |int8 - fp32| = {delta:.2f} mean IU points (goal <= {MEAN_IU_GOAL_POINTS}: {verdict})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="375x500", help="HxW of the timed image")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--calibration-count", type=int, default=8, help="synthetic images for the full width"
    )
    parser.add_argument(
        "--demo-calibration-count", type=int, default=64, help="demo training images"
    )
    parser.add_argument("--skip-speed", action="store_true", help="only the demo's accuracy")
    parser.add_argument("--skip-demo", action="store_true", help="only the full-width speed")
    args = parser.parse_args()
    print(f"machine: {cpu_line()}")
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider, default threads")
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        tmp = Path(scratch)
        if not args.skip_speed:
            speed(args, tmp)
        if not args.skip_demo:
            demo(args, tmp)
    print(f"peak RSS: {peak_rss_gb():.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
