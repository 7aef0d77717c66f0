"""Resident memory of a real ``fcn-serve`` process under the requests that cost it most.

    python bench/bench_service_memory.py [--model models/demo/fcn8s.onnx] [--concurrency 16]

Starts the service with its default settings (CPU provider) on a loopback port, samples the
server's VmRSS every 2 ms from /proc, and prints, per scenario, the answers, the peak RSS
while it ran and the RSS once it was over:

- one 2000x2000 image, then one 500x375 image: does the memory of the large run come back?
- a thin PNG (1 x 50,000 pixels, a few hundred bytes): conv1's 100-pixel padding makes it
  cost as much as a 201 x 50,200 image;
- ``--concurrency`` simultaneous uploads of a 25 MP JPEG segmented at ``?max_side=500``:
  the memory of decoding many large images at once (the model's share is small).

Then, with the service stopped, what ONNX Runtime's CPU arena is worth: a bare session with
the service's options on a 500x375 image, with the arena (the default), without it, and
shrinking it after every run, in alternating 3 s slices.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from serving import free_port, start_service

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Sampler:
    """Samples a process's RSS every 2 ms in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.002)

    def reset(self) -> None:
        self.peak = rss_mib(self.pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def png_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_jpeg(height: int, width: int) -> bytes:
    """A smooth JPEG of H x W (quality 90): small on the wire, large once decoded."""
    yy, xx = np.mgrid[0:height:8, 0:width:8]
    small = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // height], -1)
    picture = Image.fromarray(small.astype(np.uint8)).resize((width, height))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def post(port: int, path: str, body: bytes, media: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {media}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        reply = await reader.read()
        return int(reply.split(b" ", 2)[1])
    finally:
        writer.close()


def send(port: int, path: str, body: bytes, media: str, copies: int = 1) -> str:
    """POST ``copies`` requests at once; returns the statuses, e.g. '16 x 200'."""

    async def main() -> list[int]:
        return await asyncio.gather(*(post(port, path, body, media) for _ in range(copies)))

    counts = Counter(asyncio.run(main()))
    return ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))


def arena_choices(model: Path, rounds: int = 3, seconds: float = 3.0) -> dict[str, list[float]]:
    """Images/s of a bare session on a 500x375 image under each arena choice, slice by slice."""
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT))
    from service.cpus import available_cpus
    from service.runtime import SHRINK_ARENAS, session_options

    def session(arena: bool) -> ort.InferenceSession:
        options = session_options(available_cpus())
        options.enable_cpu_mem_arena = arena
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    shrink = ort.RunOptions()
    shrink.add_run_config_entry(SHRINK_ARENAS, "cpu:0")
    choices = {
        "arena (the service)": (session(True), ort.RunOptions()),
        "no arena": (session(False), ort.RunOptions()),
        "arena shrunk after every run": (session(True), shrink),
    }
    image = np.asarray(Image.open(io.BytesIO(photo_jpeg(375, 500))))[None]
    rates: dict[str, list[float]] = {name: [] for name in choices}
    for sess, options in choices.values():
        sess.run(["labels"], {"image": image}, options)
    for _ in range(rounds):
        for name, (sess, options) in choices.items():
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                sess.run(["labels"], {"image": image}, options)
                count += 1
            rates[name].append(count / (time.perf_counter() - start))
    return rates


@dataclass
class Row:
    scenario: str
    statuses: str
    peak: float
    after: float
    seconds: float

    def show(self) -> str:
        return (
            f"| {self.scenario} | {self.statuses} | {self.peak:.0f} | {self.after:.0f} | "
            f"{self.seconds:.1f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "demo" / "fcn8s.onnx")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    thin = png_bytes(1, 50_000)
    large = png_bytes(2000, 2000)
    usual = photo_jpeg(375, 500)
    photo = photo_jpeg(5000, 5000)
    port = free_port()
    server = start_service(args.model, port, {"FCN_PROVIDERS": "cpu"})
    sampler = Sampler(server.pid)
    rows: list[Row] = []

    def scenario(name: str, path: str, body: bytes, media: str, copies: int = 1) -> None:
        time.sleep(0.5)
        sampler.reset()
        start = time.perf_counter()
        statuses = send(port, path, body, media, copies)
        seconds = time.perf_counter() - start
        time.sleep(0.5)
        rows.append(Row(name, statuses, sampler.peak, rss_mib(server.pid), seconds))

    try:
        idle = rss_mib(server.pid)
        scenario("one 2000x2000 PNG", "/segment", large, "image/png")
        scenario("then one 500x375 JPEG", "/segment", usual, "image/jpeg")
        scenario(f"thin PNG 1x50000 ({len(thin)} B)", "/segment", thin, "image/png")
        scenario(
            f"{args.concurrency} x 25 MP JPEG ({len(photo) // 1024} kB), max_side=500",
            "/segment?max_side=500",
            photo,
            "image/jpeg",
            args.concurrency,
        )
    finally:
        sampler.close()
        server.terminate()
        server.wait(60)

    print(
        f"model {args.model.name}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"RSS once ready: {idle:.0f} MiB\n"
    )
    print("| scenario | answers | peak RSS MiB | RSS after MiB | seconds |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(row.show())

    rates = arena_choices(args.model)
    baseline = rates["arena (the service)"]
    print("\n| ONNX Runtime CPU arena | images/s, slice by slice | median | against the arena |")
    print("| --- | --- | ---: | ---: |")
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, baseline, strict=True)]
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {shown} | {np.median(values):.1f} | {np.median(ratios):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
