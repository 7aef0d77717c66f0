"""Slow uploads (slowloris on the body) against a real ``fcn-serve`` on a loopback port.

    python bench/bench_slow_uploads.py [--model PATH] [--upload-timeout 10] [--only NAME]

Each scenario starts the service, measures one request alone (the "one inference" of the
bound), then opens N connections that send a request head and then their body one byte a
second, and while they trickle sends normal requests (the same JPEG, whole) one after
another. It checks what the issue asks: every normal request is answered 200 within
FCN_UPLOAD_TIMEOUT_S plus one inference of its start, and every trickling connection is
answered 408 and closed. Scenarios: FCN_MAX_QUEUE=4 with 6 tricklers and the default queue
(64) with 70, each with the floor rate off (the deadline alone bounds the uploads) and with
the default floor (1024 bytes/s after 5 s). Every run is bounded: tricklers give up after
three upload timeouts, and only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving import free_port, start_service

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
IMAGE = ROOT / "models" / "demo" / "samples" / "val_000000.jpg"
# (queue setting, tricklers): None keeps the default FCN_MAX_QUEUE (64).
SCENARIOS = {"queue-4": ("4", 6), "queue-default": (None, 70)}
FLOORS = {"deadline only": {"FCN_UPLOAD_MIN_RATE": "0"}, "default floor": {}}


@dataclass
class Answer:
    """One response read off a connection: status, seconds from the request's start, and
    whether the server closed the connection after it."""

    status: int
    seconds: float
    closed: bool


async def read_answer(reader: asyncio.StreamReader, started: float) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    await reader.readexactly(length)
    seconds = time.monotonic() - started
    try:
        closed = await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:  # closed with bytes of ours unread: the kernel resets
        closed = True
    except TimeoutError:
        closed = False
    return Answer(status, seconds, closed)


def head(length: int, close: bool) -> bytes:
    return (
        f"POST /segment HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    ).encode()


async def normal(port: int, body: bytes) -> Answer:
    """One whole request, answered or not within 120 s."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(head(len(body), close=True) + body)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader, started), 120)
    finally:
        writer.close()


async def trickle(port: int, body: bytes, limit_s: float) -> Answer | None:
    """A request head, then the body one byte a second until the server answers (or
    ``limit_s`` passes: None)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    answer = asyncio.ensure_future(read_answer(reader, started))
    try:
        writer.write(head(len(body), close=False))
        for byte in range(len(body)):
            done, _ = await asyncio.wait({answer}, timeout=1.0)
            if done or time.monotonic() - started > limit_s:
                break
            writer.write(body[byte : byte + 1])
        return await asyncio.wait_for(answer, max(0.0, limit_s - (time.monotonic() - started)))
    except (TimeoutError, ConnectionError):
        return None
    finally:
        answer.cancel()
        writer.close()


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return text


def sample(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{selector}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found[1]) if found else 0.0


@dataclass
class Run:
    name: str
    floor: str
    queue: int
    tricklers: int
    alone_s: float
    timeout_s: float
    normals: list[Answer] = field(default_factory=list)
    trickled: list[Answer | None] = field(default_factory=list)
    cut_off: dict[str, float] = field(default_factory=dict)

    @property
    def bound_s(self) -> float:
        return self.timeout_s + self.alone_s

    @property
    def holds(self) -> bool:
        normals_ok = all(a.status == 200 and a.seconds <= self.bound_s for a in self.normals)
        tricklers_ok = all(a is not None and a.status == 408 and a.closed for a in self.trickled)
        return bool(self.normals) and normals_ok and tricklers_ok

    def row(self) -> str:
        statuses = sorted({a.status for a in self.normals})
        worst = max(a.seconds for a in self.normals)
        answered = [a for a in self.trickled if a is not None]
        t408 = sum(a.status == 408 for a in answered)
        closed = sum(a.closed for a in answered)
        span = f"{min(a.seconds for a in answered):.1f}-{max(a.seconds for a in answered):.1f}"
        reasons = ", ".join(f"{k} {int(v)}" for k, v in self.cut_off.items() if v)
        return (
            f"| {self.queue} | {self.tricklers} | {self.floor} | {len(self.normals)} | "
            f"{'/'.join(map(str, statuses))} | {worst:.2f} | {self.bound_s:.2f} | "
            f"{t408}/{self.tricklers} | {closed}/{self.tricklers} | {span} | {reasons} | "
            f"{'yes' if self.holds else 'NO'} |"
        )


async def scenario(model: Path, name: str, floor: str, upload_timeout_s: float, body: bytes) -> Run:
    queue, count = SCENARIOS[name]
    settings = {"FCN_UPLOAD_TIMEOUT_S": f"{upload_timeout_s:g}", **FLOORS[floor]}
    if queue is not None:
        settings["FCN_MAX_QUEUE"] = queue
    port = free_port()
    process = start_service(model, port, settings)
    try:
        alone = [(await normal(port, body)) for _ in range(5)]
        assert all(a.status == 200 for a in alone), [a.status for a in alone]
        run = Run(
            name, floor, int(queue or 64), count, max(a.seconds for a in alone), upload_timeout_s
        )
        limit_s = 3 * upload_timeout_s + 10
        tricklers = [asyncio.ensure_future(trickle(port, body, limit_s)) for _ in range(count)]
        await asyncio.sleep(1.0)  # every trickler has sent its head: the places are theirs
        # Normal requests, one after another, while the tricklers hold places and are cut off.
        window_end = time.monotonic() + 2 * upload_timeout_s + 2
        while time.monotonic() < window_end:
            run.normals.append(await normal(port, body))
            await asyncio.sleep(0.5)
        run.trickled = list(await asyncio.gather(*tricklers))
        text = await scrape(port)
        run.cut_off = {
            reason: sample(text, "fcn_uploads_cut_off_total", reason=reason)
            for reason in ("timeout", "too_slow")
        }
        return run
    finally:
        process.terminate()
        process.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "demo" / "fcn8s.onnx")
    parser.add_argument("--upload-timeout", type=float, default=10.0, help="FCN_UPLOAD_TIMEOUT_S")
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="one scenario")
    args = parser.parse_args()
    body = IMAGE.read_bytes()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        f"# model {args.model.name}, body {len(body)} bytes, FCN_UPLOAD_TIMEOUT_S "
        f"{args.upload_timeout:g}"
    )
    print(
        "| FCN_MAX_QUEUE | tricklers | floor rate | normal requests | statuses | worst s | "
        "bound s | tricklers 408 | closed | tricklers answered at s | cut off | holds |"
    )
    print("| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |")
    holds = True
    for name in [args.only] if args.only else list(SCENARIOS):
        for floor in FLOORS:
            run = await scenario(args.model, name, floor, args.upload_timeout, body)
            print(run.row(), flush=True)
            holds = holds and run.holds
    sys.exit(0 if holds else 1)


if __name__ == "__main__":
    asyncio.run(main())
