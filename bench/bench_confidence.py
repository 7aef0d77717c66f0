"""What the ``confidence`` output costs: the same network exported with it and without it
(``--no-confidence``), side by side, through ONNX Runtime and through the HTTP service.

    python bench/bench_confidence.py [--width 1] [--seconds 10] [--rounds 4] [--concurrency 2]

A random-weight FCN-8s (21 classes, full width by default) is exported twice into a temporary
folder (needs torch). The raw figures time ``session.run`` of each file on the 500x375 image,
runs alternating. The service figures go through two real ``fcn-serve`` processes, one per
file, on loopback ports: the labels-only file answering PNG label maps, the file with
confidence answering the same, then answering ``?format=confidence``. Slices alternate round by
round (the other services idle meanwhile), so the changing load of a shared machine falls on
every configuration alike; ratios are against the labels-only file in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_service import Figures, _http_worker, pooled, scene_jpeg, scrape, stage_means
from PIL import Image
from serving import free_port, start_service

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.cpus import available_cpus  # noqa: E402
from service.runtime import session_options  # noqa: E402

HEIGHT, WIDTH = 375, 500


def export_pair(width: float, folder: Path) -> tuple[Path, Path]:
    """A random-weight FCN-8s of ``width`` with VOC's 21 classes, exported with its
    confidence output and without it (unverified: the tests verify the exporter)."""
    import torch

    from contract.palette import VOC_CLASSES, voc_colormap
    from model.checkpoint import Checkpoint
    from model.export.exporter import export_onnx
    from model.nets.fcn import ModelSpec, build_fcn
    from model.nets.preprocessing import TORCHVISION

    torch.manual_seed(0)
    spec = ModelSpec("fcn8s", len(VOC_CLASSES), width)
    net = build_fcn(spec)
    for name in ("score_fr", *net.skip_layers):
        torch.nn.init.normal_(getattr(net, name).weight, std=0.01)
    checkpoint = Checkpoint(
        spec, net.state_dict(), list(VOC_CLASSES), voc_colormap(21), TORCHVISION, dataset="bench"
    )
    del net
    paths = []
    for confidence in (False, True):
        out = folder / f"fcn8s-w{width:g}-{'confidence' if confidence else 'labels'}.onnx"
        started = time.perf_counter()
        paths.append(export_onnx(checkpoint, out, with_confidence=confidence, verify=False))
        print(f"exported {out.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return paths[0], paths[1]


def raw_seconds(
    sessions: dict[str, tuple[ort.InferenceSession, list[str]]], image: np.ndarray, runs: int
) -> dict[str, list[float]]:
    """Seconds of each session's run on ``image``, the sessions taking turns ``runs`` times."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    batch = image[None]
    for _ in range(runs):
        for name, (session, outputs) in sessions.items():
            start = time.perf_counter()
            session.run(outputs, {"image": batch})
            times[name].append(time.perf_counter() - start)
    return times


def bench_http(port: int, path: str, body: bytes, concurrency: int, seconds: float) -> Figures:
    """``concurrency`` keep-alive connections posting the JPEG to ``path`` for ``seconds``."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> float:
        start = time.perf_counter()
        stop_at = start + seconds
        workers = [
            _http_worker(port, request, stop_at, latencies, statuses) for _ in range(concurrency)
        ]
        await asyncio.gather(*workers)
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    if set(statuses) != {200}:
        raise SystemExit(f"{path} answered {statuses}")
    return Figures(path, concurrency, len(latencies), elapsed, latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="FCN-8s width (1: the paper's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=4, help="slices per configuration")
    parser.add_argument("--concurrency", type=int, default=2, help="connections at once")
    parser.add_argument("--raw-runs", type=int, default=7, help="session runs per file")
    args = parser.parse_args()

    body = scene_jpeg()
    image = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    threads = available_cpus()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="fcn-bench-confidence-") as tmp:
        labels_only, with_confidence = export_pair(args.width, Path(tmp))
        print(
            f"FCN-8s width {args.width:g}, 21 classes; {threads} intra-op threads; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}; JPEG {len(body)} bytes, {WIDTH}x{HEIGHT}",
            flush=True,
        )
        options = session_options(threads)
        plain = ort.InferenceSession(labels_only, sess_options=options, providers=providers)
        sure = ort.InferenceSession(with_confidence, sess_options=options, providers=providers)
        provider = plain.get_providers()[0]
        sessions = {
            "labels-only file, labels": (plain, ["labels"]),
            "confidence file, labels + confidence": (sure, ["labels", "confidence"]),
        }
        raw_seconds(sessions, image, 1)  # warm both
        raw = raw_seconds(sessions, image, args.raw_runs)
        del plain, sure, sessions

        settings = {
            "FCN_PROVIDERS": os.environ.get("FCN_PROVIDERS", "cuda,cpu"),
            # The runtime the raw figures above are of (FCN_RUNTIME=openvino to time that one).
            "FCN_RUNTIME": os.environ.get("FCN_RUNTIME", "onnxruntime"),
            "FCN_WARMUP_SIZES": f"{HEIGHT}x{WIDTH}",
        }
        ports = {labels_only: free_port(), with_confidence: free_port()}
        servers = [start_service(model, port, settings) for model, port in ports.items()]
        configurations = [
            ("labels-only file, ?format=png", ports[labels_only], "/segment?format=png"),
            ("confidence file, ?format=png", ports[with_confidence], "/segment?format=png"),
            (
                "confidence file, ?format=confidence",
                ports[with_confidence],
                "/segment?format=confidence",
            ),
        ]
        slices: dict[str, list[Figures]] = {name: [] for name, _, _ in configurations}
        # Each configuration's share of its service's /metrics (stage times, batches).
        stages: dict[str, dict[str, float]] = {name: {} for name, _, _ in configurations}
        try:
            for _, port, path in configurations:  # open the paths once
                bench_http(port, path, body, 1, 0.1)
            for _ in range(args.rounds):
                for name, port, path in configurations:
                    before = scrape(port)
                    slices[name].append(
                        bench_http(port, path, body, args.concurrency, args.seconds)
                    )
                    for key, value in scrape(port).items():
                        gained = value - before.get(key, 0.0)
                        stages[name][key] = stages[name].get(key, 0.0) + gained
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(60)

    print(f"\nONNX Runtime ({provider}), one 500x375 image, {args.raw_runs} runs each:")
    print("| outputs fetched | median ms | vs labels-only |")
    print("| --- | --- | --- |")
    base = float(np.median(next(iter(raw.values()))))
    for name, seconds in raw.items():
        median = float(np.median(seconds))
        print(f"| {name} | {median * 1000:.1f} | {median / base:.3f}x |")

    print(f"\nHTTP service, {args.concurrency} connections, {args.rounds} slices of "
          f"{args.seconds:g} s each:")  # fmt: skip
    print("| configuration | images/s | p50 ms | requests | throughput vs labels-only |")
    print("| --- | --- | --- | --- | --- |")
    baseline = pooled(slices[configurations[0][0]]).throughput
    for name, _, _ in configurations:
        figures = pooled(slices[name])
        print(
            f"| {name} | {figures.throughput:.2f} | {figures.percentile(50):.0f} | "
            f"{figures.count} | {figures.throughput / baseline:.3f}x |"
        )
    print("\nservice stages (mean ms per request):")
    for name, _, _ in configurations:
        seconds = sum(f.seconds for f in slices[name])
        print(f"  {name}: {stage_means({}, stages[name], seconds)}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
