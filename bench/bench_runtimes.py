"""ONNX Runtime and OpenVINO side by side in one run, through the service's own runtime code:
fp32, bf16 (OpenVINO) and int8 (``fcn export --int8``'s QDQ file on both) on the full-width
FCN-8s (random weights) at one H x W image, as ms/image, the ratio to ONNX Runtime fp32 and
the share of the machine's measured GEMM peak; then the service at saturation on each (the
share of the raw runtime's throughput it keeps); then a tiled 12 MP image and each pass's
peak memory, each configuration in a fresh process.

    python bench/bench_runtimes.py [--size 375x500] [--runs 5] [--seconds 15] [--work DIR]
                                   [--tiled-configs ort-fp32,ov-bf16,ov-int8]
                                   [--skip-raw] [--skip-service]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_int8 import cpu_line
from bench.bench_onnx import random_checkpoint
from bench.bench_service import bench_http, scene_jpeg
from bench.serving import free_port, start_service
from contract.runtimes import native_bf16, openvino_core, openvino_installed
from model.data.synthetic import write_synthetic
from model.export.exporter import export_model
from model.export.quantize import image_set, quantize_file
from service.runtime import Runtime, load_runtime

ROOT = Path(__file__).resolve().parents[1]
# The issue's goal: bf16 through the service at saturation, against ONNX Runtime fp32's raw time.
BF16_GOAL = 1.9


@dataclass(frozen=True)
class Config:
    """One way to run the net: a short key, the runtime, its precision and which file."""

    key: str
    runtime: str
    precision: str
    file: str  # "fp32" or "int8"


CONFIGS = (
    Config("ort-fp32", "onnxruntime", "fp32", "fp32"),
    Config("ort-int8", "onnxruntime", "fp32", "int8"),
    Config("ov-fp32", "openvino", "fp32", "fp32"),
    Config("ov-bf16", "openvino", "bf16", "fp32"),
    Config("ov-int8", "openvino", "fp32", "int8"),
)


def open_runtime(path: Path, config: Config, threads: int) -> Runtime:
    """The service's runtime (its session options, its OpenVINO settings) on ``path``."""
    return load_runtime(
        path,
        name=config.key,
        providers=["CPUExecutionProvider"],
        require_gpu=False,
        device_id=0,
        gpu_mem_limit_mb=0,
        cudnn_conv_algo_search="HEURISTIC",
        trt_fp16=False,
        trt_cache_dir=None,
        intra_op_threads=threads,
        runtime=config.runtime,
        precision=config.precision,
    )


def net_flops(height: int, width: int) -> float:
    """Multiply-adds x 2 of the full-width FCN-8s on one H x W image, summed over its conv and
    transposed-conv layers (the rest is a rounding error)."""
    net = random_checkpoint("fcn8s", 1.0).build_model().eval()
    total = [0.0]

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        assert isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        kh, kw = module.kernel_size
        per_output = module.in_channels // module.groups * kh * kw
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel feeds k x k outputs
            total[0] += 2.0 * inputs[0].numel() * module.out_channels * kh * kw / module.groups
        else:
            total[0] += 2.0 * output.numel() * per_output

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            module.register_forward_hook(count)
    with torch.inference_mode():
        net(torch.zeros(1, 3, height, width))
    return total[0]


def gemm_peak(precision: str, threads: int, size: int = 2048, runs: int = 7) -> float:
    """FLOP/s of a square GEMM at ``precision`` (fp32 or bf16) in OpenVINO's CPU plugin (the
    oneDNN kernels the runtimes' convolutions use; torch's MKL picks slow paths on AMD), best
    of ``runs``."""
    import openvino as ov
    import openvino.opset13 as ops
    import openvino.properties.hint as hints

    a = ops.parameter([size, size], ov.Type.f32)
    b = ops.constant(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    config = {
        hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
    }
    compiled = openvino_core().compile_model(model, "CPU", config)
    x = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    compiled(x)
    best = min(_timed(lambda: compiled(x)) for _ in range(runs))
    return 2.0 * size**3 / best


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def export_files(tmp: Path, height: int, width: int, calibration_count: int) -> dict[str, Path]:
    """The full-width FCN-8s exported by the project's exporter, and its int8 QDQ file."""
    fp32, int8 = tmp / "fcn8s-fp32.onnx", tmp / "fcn8s-int8.onnx"
    if fp32.is_file() and int8.is_file():  # --work of an earlier run
        return {"fp32": fp32, "int8": int8}
    started = time.perf_counter()
    export_model(random_checkpoint("fcn8s", 1.0), fp32, verify=False)
    data = write_synthetic(tmp / "calibration", calibration_count, 1, (height, width), seed=0)
    calibration = image_set(data / "JPEGImages", count=calibration_count)
    quantize_file(fp32, int8, calibration)
    print(f"exported and quantized in {time.perf_counter() - started:.0f} s")
    return {"fp32": fp32, "int8": int8}


def raw_table(
    files: dict[str, Path], configs: list[Config], image: np.ndarray, args: argparse.Namespace
) -> dict[str, float]:
    """Median ms/image of each configuration, printed beside the ratios; returns them."""
    flops = net_flops(*image.shape[1:3])
    peaks = {"fp32": gemm_peak("fp32", args.threads)}
    if native_bf16():
        peaks["bf16"] = gemm_peak("bf16", args.threads)
    shown = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    print(f"net: {flops / 1e9:.0f} GFLOP per image; GEMM peak ({args.threads} threads): {shown}")
    runtimes = {c.key: open_runtime(files[c.file], c, args.threads) for c in configs}
    labels = {key: runtime.run(image)["labels"] for key, runtime in runtimes.items()}  # warm-up
    # Round-robin, so that a noisy neighbour slows every configuration alike.
    took: dict[str, list[float]] = {key: [] for key in runtimes}
    for _ in range(args.runs):
        for key, runtime in runtimes.items():
            took[key].append(_timed(lambda r=runtime: r.run(image)))
    seconds = {key: statistics.median(values) for key, values in took.items()}
    del runtimes
    base = seconds["ort-fp32"]
    height, width = image.shape[1:3]
    print(f"\n1 image {height}x{width}, batch 1, median of {args.runs} round-robin runs:")
    print("| runtime | precision | file | ms/image | x ORT fp32 | % of peak | labels = ORT fp32 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for config in configs:
        median = seconds[config.key]
        peak = peaks.get(config.precision, peaks["fp32"])
        agree = float((labels[config.key] == labels["ort-fp32"]).mean())
        print(
            f"| {config.runtime} | {config.precision} | {config.file} | {median * 1000:.0f} "
            f"| {base / median:.2f}x | {100 * flops / median / peak:.0f}% | {agree:.2%} |"
        )
    print("(% of peak: of the fp32 GEMM's for fp32 and int8, of the bf16 GEMM's for bf16)")
    return seconds


def service_table(
    files: dict[str, Path], configs: list[Config], raw: dict[str, float], args: argparse.Namespace
) -> None:
    """Each configuration behind fcn-serve at saturation (2 connections), against its raw run."""
    body = scene_jpeg()  # a 500x375 JPEG
    print(f"\nthe service at saturation ({args.connections} connections, {args.seconds:.0f} s):")
    print("| runtime | precision | file | images/s | x ORT fp32 raw | share of its raw runtime |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for config in configs:
        port = free_port()
        settings = {
            "FCN_RUNTIME": config.runtime,
            "FCN_PRECISION": config.precision,
            "FCN_PROVIDERS": "cpu",
            "FCN_INTRA_OP_THREADS": str(args.threads),
        }
        process = start_service(files[config.file], port, settings)
        try:
            bench_http(port, body, args.connections, 2.0)  # warm the connections and buffers
            figures = bench_http(port, body, args.connections, args.seconds)
        finally:
            process.terminate()
            process.wait(30)
        rate = figures.throughput
        print(
            f"| {config.runtime} | {config.precision} | {config.file} | {rate:.2f} "
            f"| {rate * raw['ort-fp32']:.2f}x | {rate * raw[config.key]:.0%} |"
        )
        if config.key == "ov-bf16":
            verdict = "goal met" if rate * raw["ort-fp32"] >= BF16_GOAL else "goal missed"
            print(f"  bf16 through the service: goal >= {BF16_GOAL}x ORT fp32 raw: {verdict}")


CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from bench.bench_runtimes import CONFIGS, open_runtime
from contract.tiling import DEFAULT_MAX_MODEL_PIXELS, DEFAULT_OVERLAP, plan_tiles
from contract.tiling import segment_tiled_maps
path, key = sys.argv[1], sys.argv[2]
threads, height, width = map(int, sys.argv[3:6])
config = next(c for c in CONFIGS if c.key == key)
runtime = open_runtime(Path(path), config, threads)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
plan = plan_tiles(height, width, max_pixels=DEFAULT_MAX_MODEL_PIXELS, overlap=DEFAULT_OVERLAP,
                  tiling=runtime.info.meta.tiling)
start = time.perf_counter()
# Labels and confidence stitched tile by tile, as the service stitches them.
segment_tiled_maps(image, plan, lambda batch: tuple(runtime.run(batch).values()))
took = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tiles": plan.count, "tile": list(plan.tile_shape), "seconds": took,
                  "loaded_mib": loaded, "peak_mib": peak}))
"""


def tiled_table(files: dict[str, Path], configs: list[Config], args: argparse.Namespace) -> None:
    """A 12 MP (4000x3000) image cut as the service cuts it, each configuration alone."""
    height, width = 3000, 4000
    print(f"\ntiled {width}x{height} (12 MP) at the default FCN_MAX_MODEL_PIXELS, fresh process:")
    print("| runtime | precision | file | tiles | s/image | RSS loaded MiB | peak RSS MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for config in configs:
        command = [sys.executable, "-c", CHILD, str(files[config.file]), config.key]
        done = subprocess.run(
            [*command, str(args.threads), str(height), str(width)],
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"| {config.key} failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        tile = "x".join(map(str, r["tile"]))
        print(
            f"| {config.runtime} | {config.precision} | {config.file} | {r['tiles']} of {tile} "
            f"| {r['seconds']:.1f} | {r['loaded_mib']:.0f} | {r['peak_mib']:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="375x500", help="HxW of the timed image")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--calibration-count", type=int, default=8)
    parser.add_argument("--connections", type=int, default=2, help="service: keep-alive clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="service: seconds per run")
    parser.add_argument("--skip-raw", action="store_true", help="and so the service part")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument(
        "--work", type=Path, help="keep the exported files here and reuse them (default: none)"
    )
    parser.add_argument(
        "--tiled-configs",
        default="ort-fp32,ov-bf16,ov-int8",
        help="configurations of the tiled 12 MP part, comma separated (empty: none)",
    )
    args = parser.parse_args()
    if not openvino_installed():
        raise SystemExit("openvino is not installed: pip install 'fcn-segmentation[openvino]'")
    import openvino as ov

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    bf16 = " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bf16 flags"
    print(f"machine: {cpu_line()}; {bf16}; native bf16 (OpenVINO says): {native_bf16()}")
    print(f"onnxruntime {ort.__version__}, openvino {ov.__version__}, {args.threads} threads")
    configs = [c for c in CONFIGS if c.precision != "bf16" or native_bf16()]
    height, width = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        files = export_files(work, height, width, args.calibration_count)
        if not args.skip_raw:
            raw = raw_table(files, configs, image, args)
            if not args.skip_service:
                service_table(files, configs, raw, args)
        wanted = [c for c in configs if c.key in args.tiled_configs.split(",")]
        if wanted:
            tiled_table(files, wanted, args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of this process: {rss:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
