"""ONNX export at full width: export time, file size and ONNX Runtime load time (fp32 and
fp16), then ORT CPU against PyTorch eager on one image, same process, as a ratio.

    python bench/bench_onnx.py [--arch fcn8s] [--size 375x500] [--runs 5] [--no-verify]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.palette import VOC_CLASSES, voc_colormap
from model.checkpoint import Checkpoint
from model.export.exporter import export_model
from model.export.graph import SegmentationGraph
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE


def random_checkpoint(arch: str, width: float) -> Checkpoint:
    """A 21-class network with non-zero score layers, so labels vary across the image."""
    torch.manual_seed(0)
    net = build_fcn(ModelSpec(arch, len(VOC_CLASSES), width))
    for name in ("score_fr", *net.skip_layers):
        torch.nn.init.normal_(getattr(net, name).weight, std=0.01)
    return Checkpoint(
        net.spec, net.state_dict(), list(VOC_CLASSES), voc_colormap(21), CAFFE, dataset="bench"
    )


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_seconds(path: Path, repeats: int = 3) -> float:
    """Median time to create a CPU InferenceSession (parse, optimise, allocate weights)."""
    return median_seconds(
        lambda: ort.InferenceSession(path, providers=["CPUExecutionProvider"]), repeats, 0
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fcn8s")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--size", default="375x500", help="HxW of the timed image")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-fp16", action="store_true")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))

    checkpoint = random_checkpoint(args.arch, args.width)
    params = sum(t.numel() for t in checkpoint.state_dict.values() if t.is_floating_point())
    print(f"{args.arch} width {args.width}: {params / 1e6:.1f}M parameters")
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        paths = {}
        for fp16 in [False] if args.no_fp16 else [False, True]:
            precision = "fp16" if fp16 else "fp32"
            path = Path(tmp) / f"{args.arch}-{precision}.onnx"
            start = time.perf_counter()
            result = export_model(checkpoint, path, fp16=fp16, verify=not args.no_verify)
            total = time.perf_counter() - start
            if result.report is not None:
                print(result.report)
            rows.append(
                (precision, result.export_seconds, total, result.size_bytes, load_seconds(path))
            )
            paths[precision] = path
        print(f"\n{'':5} {'export s':>9} {'+verify s':>10} {'file MB':>8} {'ORT load s':>11}")
        for precision, export_s, total_s, size, load_s in rows:
            print(f"{precision:5} {export_s:9.1f} {total_s:10.1f} {size / 1e6:8.1f} {load_s:11.2f}")
        if len(rows) == 2:
            print(f"fp16 / fp32 file size: {rows[1][3] / rows[0][3]:.3f}")

        image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        session = ort.InferenceSession(paths["fp32"], providers=["CPUExecutionProvider"])
        graph = SegmentationGraph(checkpoint.build_model(), checkpoint.preprocessing).eval()
        tensor = torch.from_numpy(image)

        def eager() -> object:
            with torch.inference_mode():
                return graph(tensor)

        ort_s = median_seconds(lambda: session.run(None, {"image": image}), args.runs)
        torch_s = median_seconds(eager, args.runs)
        (labels,) = session.run(None, {"image": image})
        (expected,) = eager()  # type: ignore[misc]
        agreement = float((labels == expected.numpy()).mean())
        print(f"\n1 image {height}x{width} (H x W), median of {args.runs} warm runs:")
        print(f"  PyTorch eager fp32 : {torch_s * 1000:8.0f} ms")
        print(f"  ORT CPU fp32       : {ort_s * 1000:8.0f} ms")
        print(f"  PyTorch / ORT      : {torch_s / ort_s:8.2f}x  (labels agree {agreement:.4%})")
        if "fp16" in paths:
            del session
            half = ort.InferenceSession(paths["fp16"], providers=["CPUExecutionProvider"])
            half_s = median_seconds(lambda: half.run(None, {"image": image}), args.runs)
            print(f"  ORT CPU fp16       : {half_s * 1000:8.0f} ms  (fp16 is meant for GPUs)")
        print(f"peak RSS: {peak_rss_gb():.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
