"""Raw ONNX Runtime session against the HTTP service, same model, same 500x375 JPEG.

    python bench/bench_service.py [--model PATH] [--seconds 4] [--rounds 3] [--concurrency 1 4 16]

The raw figures call ``session.run`` from C threads on the decoded image, with the session
options the service uses. The service figures go through a real ``fcn-serve`` process on a
loopback port (HTTP, JPEG decode, batcher, PNG encode), driven by a minimal keep-alive
HTTP/1.1 client in this process. At each concurrency, raw and service slices alternate
(the service idles during raw slices), so the changing load of a shared machine cancels.
Without ``--model`` a small-width FCN-8s (random weights, 21 classes) is exported into a
temporary folder first (needs torch).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from serving import free_port, start_service

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.cpus import available_cpus  # noqa: E402
from service.runtime import session_options  # noqa: E402

HEIGHT, WIDTH = 375, 500


@dataclass
class Figures:
    """Throughput and latency of one configuration."""

    name: str
    concurrency: int
    count: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.count / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000

    def row(self) -> str:
        return (
            f"| {self.name} | {self.concurrency} | {self.throughput:7.1f} | "
            f"{self.percentile(50):7.1f} | {self.percentile(99):7.1f} | {self.count} |"
        )


def export_default(width: float, folder: Path) -> Path:
    """A random-weight FCN-8s of ``width`` with VOC's 21 classes, exported to ONNX."""
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
    return export_onnx(checkpoint, folder / f"fcn8s-w{width:g}.onnx")


def scene_jpeg() -> bytes:
    """A 500x375 JPEG (quality 90) with gradients and shapes, like a photo compresses."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, (xx + yy) * 255 // (WIDTH + HEIGHT)])
    rng = np.random.default_rng(0)
    noisy = base.transpose(1, 2, 0) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    picture = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((60, 80, 220, 300), fill=(200, 40, 40))
    draw.rectangle((260, 40, 460, 200), fill=(30, 160, 60))
    draw.polygon([(300, 340), (420, 230), (490, 360)], fill=(40, 40, 190))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bench_raw(
    session: ort.InferenceSession, image: np.ndarray, concurrency: int, seconds: float
) -> Figures:
    """``concurrency`` threads calling session.run on one image for ``seconds``."""
    batch = image[None]
    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + 0.05
    stop_at = start_at + seconds

    def worker() -> None:
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        mine = []
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            session.run(["labels"], {"image": batch})
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start_at
    return Figures("raw session", concurrency, len(latencies), elapsed, latencies)


async def _http_worker(
    port: int, request: bytes, stop_at: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _probe(port: int, stop_at: float, latencies: list[float]) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
    finally:
        writer.close()


def bench_http(
    port: int, body: bytes, concurrency: int, seconds: float, probes: list[float] | None = None
) -> Figures:
    """``concurrency`` keep-alive connections posting the JPEG for ``seconds``."""
    request = (
        "POST /segment HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> float:
        start = time.perf_counter()
        stop_at = start + seconds
        tasks = [
            _http_worker(port, request, stop_at, latencies, statuses) for _ in range(concurrency)
        ]
        if probes is not None:
            tasks.append(_probe(port, stop_at, probes))
        await asyncio.gather(*tasks)
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    if set(statuses) != {200}:
        raise SystemExit(f"the service answered {statuses}")
    return Figures("HTTP service", concurrency, len(latencies), elapsed, latencies)


def scrape(port: int) -> dict[str, float]:
    """The service's /metrics as {name + stage label: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    text = data.split(b"\r\n\r\n", 1)[1].decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name + sample.labels.get("stage", "")] = sample.value
    return values


def stage_means(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """Mean ms per stage, mean batch size and model utilisation between two scrapes."""
    sums = {key: after[key] - before.get(key, 0.0) for key in after}
    parts = []
    for stage in ("decode", "queue", "inference", "encode"):
        count = sums.get(f"fcn_stage_duration_seconds_count{stage}", 0) or 1
        parts.append(
            f"{stage} {sums.get(f'fcn_stage_duration_seconds_sum{stage}', 0) / count * 1000:.1f}"
        )
    batches = sums.get("fcn_batch_size_count", 0) or 1
    parts.append(f"mean batch {sums.get('fcn_batch_size_sum', 0) / batches:.2f}")
    busy = sums.get("fcn_inference_busy_seconds_total", 0) / seconds
    parts.append(f"model busy {busy:.0%} of the time")
    return "; ".join(parts)


def pooled(parts: list[Figures]) -> Figures:
    """One configuration's slices as one set of figures."""
    return Figures(
        parts[0].name,
        parts[0].concurrency,
        sum(p.count for p in parts),
        sum(p.seconds for p in parts),
        [x for p in parts for x in p.latencies],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX file (default: export a small FCN-8s)")
    parser.add_argument("--width", type=float, default=1 / 16, help="width of the default model")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=3, help="service slices per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_default(args.width, Path(tmp))
        body = scene_jpeg()
        image = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        threads = available_cpus()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        session = ort.InferenceSession(
            model, sess_options=session_options(threads), providers=providers
        )
        provider = session.get_providers()[0]
        session.run(["labels"], {"image": image[None]})
        print(
            f"model {model.name}; {provider}, {threads} intra-op threads; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}; JPEG {len(body)} bytes, {WIDTH}x{HEIGHT}"
        )

        port = free_port()
        server = start_service(
            model,
            port,
            {
                "FCN_PROVIDERS": os.environ.get("FCN_PROVIDERS", "cuda,cpu"),
                "FCN_WARMUP_SIZES": f"{HEIGHT}x{WIDTH}",
            },
        )
        results: list[tuple[Figures, Figures, list[float], str]] = []
        probes: list[float] = []
        try:
            bench_http(port, body, 1, 1.0)  # open the paths once
            for c in args.concurrency:
                # raw, service, raw, service, ..., raw: each service slice is compared with
                # the raw slices on either side, so the load of a shared machine cancels.
                raw = [bench_raw(session, image, c, args.seconds)]
                http: list[Figures] = []
                ratios: list[float] = []
                before = scrape(port)
                for _ in range(args.rounds):
                    watch = probes if c == max(args.concurrency) else None
                    http.append(bench_http(port, body, c, args.seconds, watch))
                    raw.append(bench_raw(session, image, c, args.seconds))
                    around = (raw[-2].throughput + raw[-1].throughput) / 2
                    ratios.append(http[-1].throughput / around)
                stages = stage_means(before, scrape(port), sum(h.seconds for h in http))
                results.append((pooled(raw), pooled(http), ratios, stages))
        finally:
            server.terminate()
            server.wait(60)

    print("\n| path | concurrency | images/s | p50 ms | p99 ms | requests |")
    print("| --- | --- | --- | --- | --- | --- |")
    for raw_figures, http_figures, _, _ in results:
        print(raw_figures.row())
        print(http_figures.row())
    print("\nservice / raw throughput, slice by slice; service stages (mean ms per request):")
    for raw_figures, _, ratios, stages in results:
        shown = ", ".join(f"{r:.0%}" for r in ratios)
        print(f"  c={raw_figures.concurrency}: {shown} (median {np.median(ratios):.0%}); {stages}")
    _, saturated, ratios, _ = results[-1]
    print(
        f"saturation (c={saturated.concurrency}): service {saturated.throughput:.1f} images/s, "
        f"median {np.median(ratios):.0%} of the raw session's (goal >= 90%)"
    )
    raw_one, http_one, _, _ = results[0]
    if raw_one.concurrency == 1:
        overhead = http_one.percentile(50) - raw_one.percentile(50)
        print(f"p50 overhead at c=1: {overhead:.1f} ms (HTTP + decode + encode; goal <= 8 ms)")
    if probes:
        print(
            f"/livez under saturation: p50 {np.percentile(probes, 50) * 1000:.1f} ms, "
            f"p99 {np.percentile(probes, 99) * 1000:.1f} ms, max {max(probes) * 1000:.1f} ms "
            f"({len(probes)} probes; goal < 50 ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
