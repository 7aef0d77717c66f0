"""Full-resolution inference against image size: one pass against tiles, then small requests
while a 100 MP image is in the service.

    python bench/bench_tiling.py [--sizes 1,12,50,100] [--width 1.0] [--skip-service]

Part 1 exports a 21-class FCN-8s (random weights, non-zero score layers) at ``--width``
(1.0: the paper's network) and, for each size in megapixels (4:3 images), runs it on ONNX
Runtime's CPU provider in a fresh process per run: one pass over the whole image where its
memory allows, and tiled as the service tiles (``FCN_MAX_MODEL_PIXELS`` 8 M padded pixels a
pass, the default overlap, and the exact one at 12 MP). Each run prints its wall time, the
pixels per second, the process's peak RSS (``ru_maxrss``) and that peak above the process
just before inference (the image and label map already allocated).

Part 0 measures what the overlap costs in labels: the demo model on a 1301x1003 mosaic of
the synthetic scenes it was trained on, whole against tiled (tiles of at most 700 a side),
at overlaps from 0 to the exact one.

Part 3 measures the service's own resident memory (VmRSS every 5 ms) while it answers one
10000x10000 JPEG on the demo model as a label PNG, a JPEG overlay and a PNG overlay.

Part 2 starts ``fcn-serve`` on the demo model and measures small requests (500x375 JPEG,
one at a time) alone, then while one 100 MP JPEG is being segmented, with the default tile
size and with ``FCN_TILE_SIZE=1024``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving import free_port, start_service  # noqa: E402

from contract.tiling import DEFAULT_OVERLAP, Tiling, padded_pixels, plan_tiles  # noqa: E402

MIB = 2**20
BUDGET = 8_000_000  # FCN_MAX_MODEL_PIXELS
# One pass is tried only where its padded size fits this (full width: ~0.5 GB a padded MP).
WHOLE_LIMIT = 16_000_000

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
from contract.tiling import Tiling, plan_tiles, segment_tiled
path, height, width, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
run = lambda batch: session.run(["labels"], {"image": np.ascontiguousarray(batch)})[0]
rng = np.random.default_rng(0)
cell = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
image = np.tile(cell, (height // 256 + 1, width // 256 + 1, 1))[:height, :width].copy()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if overlap < 0:
    out = run(image[None])[0]
    tiles = 1
else:
    plan = plan_tiles(height, width, max_pixels=8_000_000, overlap=overlap, tiling=Tiling())
    out = segment_tiled(image, plan, run)
    tiles = plan.count
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": before, "tiles": tiles}))
"""


def export(width: float, folder: Path) -> Path:
    from bench_onnx import random_checkpoint

    from model.export.exporter import export_onnx

    return export_onnx(random_checkpoint("fcn8s", width), folder / "fcn8s.onnx", verify=False)


def size_of(megapixels: float) -> tuple[int, int]:
    """A 4:3 image of about ``megapixels``."""
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    return round(width * 3 / 4), width


def run_child(model: Path, height: int, width: int, overlap: int) -> dict[str, float] | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(height), str(width), str(overlap)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"    failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def part_zero() -> None:
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "tests" / "contract"))
    from test_tiling import mosaic

    from contract.tiling import segment_tiled

    session = ort.InferenceSession(
        str(ROOT / "models" / "demo" / "fcn8s.onnx"), providers=["CPUExecutionProvider"]
    )

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["labels"], {"image": np.ascontiguousarray(batch)})[0])

    image = mosaic(1003, 1301)
    whole = run(image[None])[0]
    print("\nDemo model, 1301x1003 mosaic, tiles of at most 700 a side, against one pass")
    print("| overlap | tiles | tile | padded MP computed (one pass: 1.81) | labels that differ |")
    print("| ---: | ---: | --- | ---: | ---: |")
    for overlap in (0, 32, 64, 128, 192, 256, Tiling().exact_overlap):
        plan = plan_tiles(
            1003, 1301, max_pixels=10**9, overlap=overlap, tiling=Tiling(), tile_size=700
        )
        differ = int((segment_tiled(image, plan, run) != whole).sum())
        print(
            f"| {overlap} | {plan.count} | {plan.tile_shape[1]}x{plan.tile_shape[0]} "
            f"| {plan.cost / 1e6:.2f} | {differ} ({differ / whole.size:.4%}) |"
        )


def part_one(sizes: list[float], width: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        model = export(width, Path(folder))
        print(f"\nFCN-8s at width {width}, {model.stat().st_size / MIB:.0f} MiB ONNX, CPU provider")
        print(
            "| image | run | tiles | padded MP computed | s | MP/s (image) | peak RSS MiB "
            "| peak - before inference MiB |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for megapixels in sizes:
            height, width_px = size_of(megapixels)
            runs: list[tuple[str, int]] = []
            if padded_pixels(height, width_px) <= WHOLE_LIMIT:
                runs.append(("one pass", -1))
            runs.append((f"tiled, overlap {DEFAULT_OVERLAP}", DEFAULT_OVERLAP))
            if megapixels == 12:
                runs.append(
                    (f"tiled, overlap {Tiling().exact_overlap} (exact)", Tiling().exact_overlap)
                )
            for name, overlap in runs:
                if overlap < 0:
                    computed = padded_pixels(height, width_px)
                else:
                    plan = plan_tiles(
                        height, width_px, max_pixels=BUDGET, overlap=overlap, tiling=Tiling()
                    )
                    computed = plan.cost
                result = run_child(model, height, width_px, overlap)
                if result is None:
                    continue
                rate = height * width_px / result["seconds"] / 1e6
                print(
                    f"| {width_px}x{height} ({megapixels:g} MP) | {name} | {int(result['tiles'])} "
                    f"| {computed / 1e6:.1f} | {result['seconds']:.1f} | {rate:.3f} "
                    f"| {result['peak_kib'] / 1024:.0f} "
                    f"| {(result['peak_kib'] - result['before_kib']) / 1024:.0f} |",
                    flush=True,
                )


def post(port: int, body: bytes, timeout: float = 900) -> tuple[int, float, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    connection.request("POST", "/segment", body, {"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    response.read()
    seconds = time.perf_counter() - start
    connection.close()
    return response.status, seconds, dict(response.getheaders())


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"{len(ms)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {ms.max():.1f}"


def _large(port: int, body: bytes, result: dict[str, object]) -> None:
    status, seconds, headers = post(port, body)
    result.update(status=status, seconds=seconds, tiles=headers.get("x-tiles"))


def part_two() -> None:
    model = ROOT / "models" / "demo" / "fcn8s.onnx"
    sample = np.asarray(Image.open(ROOT / "models" / "demo" / "samples" / "val_000002.jpg"))
    small_image = np.tile(sample, (3, 4, 1))[:375, :500]
    buffer = io.BytesIO()
    Image.fromarray(small_image).save(buffer, "JPEG", quality=90)
    small = buffer.getvalue()
    big_image = np.tile(sample, (63, 63, 1))[:10_000, :10_000]
    buffer = io.BytesIO()
    Image.fromarray(big_image).save(buffer, "JPEG", quality=90)
    big = buffer.getvalue()
    del big_image
    print(
        f"\nService on the demo model; small: 500x375 JPEG, large: 10000x10000 JPEG "
        f"({len(big) / MIB:.1f} MiB)"
    )
    print(
        "| tile size | small requests while | n | p50 ms | p99 ms | max ms "
        "| large request s | tiles |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tile_size in (0, 1024):
        port = free_port()
        settings = {
            "FCN_PROVIDERS": "cpu",
            "FCN_MAX_UPLOAD_BYTES": str(256 * MIB),
            "FCN_REQUEST_TIMEOUT_S": "900",
            "FCN_TILE_SIZE": str(tile_size),
        }
        process = start_service(model, port, settings)
        try:
            for _ in range(20):
                post(port, small)
            alone = [post(port, small)[1] for _ in range(300)]
            result: dict[str, object] = {}
            thread = threading.Thread(target=_large, args=(port, big, result))
            thread.start()
            time.sleep(1.0)  # past the upload, into decoding and tiles
            during: list[float] = []
            while thread.is_alive():
                _, seconds, _ = post(port, small)
                if thread.is_alive():
                    during.append(seconds)
            thread.join()
            name = str(tile_size or "default (2628)")
            print(f"| {name} | alone | {percentiles(alone)} | | |")
            print(
                f"| {name} | a 100 MP request runs | {percentiles(during)} "
                f"| {result['seconds']:.1f} (status {result['status']}) | {result['tiles']} |",
                flush=True,
            )
        finally:
            process.terminate()
            process.wait(30)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _sample_peak(pid: int, peak: list[float], done: threading.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], rss_mib(pid))
        time.sleep(0.005)


def part_three() -> None:
    sample = np.asarray(Image.open(ROOT / "models" / "demo" / "samples" / "val_000002.jpg"))
    buffer = io.BytesIO()
    Image.fromarray(np.tile(sample, (63, 63, 1))[:10_000, :10_000]).save(buffer, "JPEG", quality=90)
    big = buffer.getvalue()
    port = free_port()
    settings = {
        "FCN_PROVIDERS": "cpu",
        "FCN_MAX_UPLOAD_BYTES": str(256 * MIB),
        "FCN_REQUEST_TIMEOUT_S": "900",
    }
    process = start_service(ROOT / "models" / "demo" / "fcn8s.onnx", port, settings)
    print("\nService RSS, one 10000x10000 JPEG on the demo model")
    print("| answer | status | MiB | s | RSS before MiB | peak MiB | after MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for query in ("", "?format=overlay&image_format=jpeg", "?format=overlay&image_format=png"):
            before = rss_mib(process.pid)
            peak, done = [before], threading.Event()
            sampler = threading.Thread(target=_sample_peak, args=(process.pid, peak, done))
            sampler.start()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
            start = time.perf_counter()
            connection.request("POST", "/segment" + query, big, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            data = response.read()
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
            print(
                f"| {query or '?format=png'} | {response.status} | {len(data) / MIB:.1f} "
                f"| {seconds:.1f} | {before:.0f} | {peak[0]:.0f} | {rss_mib(process.pid):.0f} |",
                flush=True,
            )
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,12,50,100", help="megapixels, comma separated")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of FCN-8s")
    parser.add_argument("--skip-service", action="store_true", help="part 1 only")
    parser.add_argument("--skip-sizes", action="store_true", help="no part 1")
    parser.add_argument("--skip-overlaps", action="store_true", help="no part 0")
    parser.add_argument("--skip-memory", action="store_true", help="no part 3")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, max RSS counted by ru_maxrss "
        f"({resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB here)"
    )
    if not args.skip_overlaps:
        part_zero()
    if not args.skip_sizes:
        part_one([float(s) for s in args.sizes.split(",")], args.width)
    if not args.skip_service:
        part_two()
    if not args.skip_memory:
        part_three()


if __name__ == "__main__":
    main()
