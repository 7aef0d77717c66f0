"""Helpers of the service tests: settings, a running in-process app, raw ASGI requests, the
error contract, metric reading. Test images come from ``tests.images``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.main import create_app
from service.runtime import Runtime, load_runtime
from tests.images import encode, pattern

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
# The image most tests post: smooth, several classes under the tiny model, odd sizes.
IMAGE = pattern(45, 61)
PNG = encode(IMAGE, "PNG")
# Every key of contract.schema.REQUIRED_KEYS, so the contract accepts the hand-built width-8 graph
# (conftest.py).
WIDTH8_METADATA: dict[str, str] = {
    "fcn.schema": "1",
    "fcn.arch": "width8",
    "fcn.backbone": "none",
    "fcn.width": "1.0",
    "fcn.classes": json.dumps(["dark", "dim", "light", "bright"]),
    "fcn.palette": json.dumps(PALETTE[:4]),
    "fcn.ignore_index": "255",
    "fcn.dataset": "none",
    "fcn.metrics": "{}",
    "fcn.created": "2026-12-02T00:00:00+00:00",
}
# The runtime the service tests run on, fixed so that installing openvino (which `auto` would
# then pick on the CPU) changes nothing unnoticed: ONNX Runtime at fp32, or the runtime that
# SERVICE_TEST_RUNTIME names (the whole suite on OpenVINO: SERVICE_TEST_RUNTIME=openvino).
# Tests marked `runtimes` run once per runtime: the `service_runtime` fixture sets it here.
DEFAULT_TEST_RUNTIME = os.environ.get("SERVICE_TEST_RUNTIME", "onnxruntime")
TEST_RUNTIME = {"runtime": DEFAULT_TEST_RUNTIME, "precision": "fp32"}
# What /v1/model, /metrics and the page call the CPU that runs the tests' models.
TEST_PROVIDER = "CPUExecutionProvider" if DEFAULT_TEST_RUNTIME == "onnxruntime" else "OpenVINO CPU"


def server_environment(model: Path, **settings: str) -> dict[str, str]:
    """The environment of a service process on ``model`` (CPU) with FCN_* ``settings``; the
    caller's own FCN_* variables are left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({"FCN_MODEL_PATH": str(model), "FCN_PROVIDERS": "cpu"})
    env.update({f"FCN_{k.upper()}": v for k, v in TEST_RUNTIME.items()})
    env.update({f"FCN_{k.upper()}": v for k, v in settings.items()})
    return env


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings(model: Path, **overrides: Any) -> Settings:
    """Fast test settings: CPU, a tiny warm-up, two threads at most."""
    values: dict[str, Any] = {
        "model_path": model,
        "providers": "cpu",
        "warmup_sizes": "16x16",
        "max_delay_ms": 20,
        "intra_op_threads": 2,
        **TEST_RUNTIME,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30) -> None:
    """Poll /readyz until it answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await client.get("/readyz")).status_code != 200:
        assert loop.time() < deadline, "the service did not become ready"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if ready:
                await wait_ready(client)
            yield client


@contextlib.asynccontextmanager
async def serve(model: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A ready in-process app on ``model`` with test settings and ``overrides``."""
    async with running(create_app(settings(model, **overrides))) as client:
        yield client


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def metrics(client: httpx.AsyncClient) -> str:
    """GET /metrics."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def wait_metric(
    client: httpx.AsyncClient, name: str, value: float, timeout_s: float = 30, **labels: str
) -> None:
    """Poll /metrics until ``name`` reaches ``value``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while metric(await metrics(client), name, **labels) < value:
        assert loop.time() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.005)


def png_labels(content: bytes) -> np.ndarray:
    """The class ids of a label-map PNG."""
    picture = Image.open(io.BytesIO(content))
    assert picture.mode == "P"
    return np.asarray(picture)


def reference_labels(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    """Labels of one H x W x 3 image straight from ONNX Runtime."""
    (labels,) = session.run(["labels"], {"image": np.ascontiguousarray(image)[None]})
    return np.asarray(labels[0])


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """A COCO uncompressed RLE back to an H x W bool mask (column-major counts)."""
    height, width = rle["size"]
    values = np.zeros(sum(rle["counts"]), dtype=bool)
    position, on = 0, False
    for count in rle["counts"]:
        values[position : position + count] = on
        position += count
        on = not on
    assert position == height * width
    return values.reshape((height, width), order="F")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error body: {"error": {"code", "message"}} and the right status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of an HTTP/1.1 POST of ``path`` with ``headers``, from a loopback client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
    }


async def asgi_post(
    app: FastAPI, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, int]:
    """POST /segment straight through ASGI; after the body, the client is gone.

    Returns the status, the body and how many body chunks the app pulled.
    """
    sent: list[dict[str, Any]] = []
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {
                "type": "http.request",
                "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks),
            }
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(post_scope("/segment", headers), receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], body, pulled


async def busy(client: httpx.AsyncClient, big_image: bytes) -> asyncio.Task[httpx.Response]:
    """Start a 2000x2000 request and return once the model is running it."""
    task = asyncio.ensure_future(
        client.post("/segment", content=big_image, headers={"content-type": "image/bmp"})
    )
    await wait_metric(client, "fcn_batches_running", 1)
    return task


def wait_for_server(url: str, gone: Callable[[], str | None], timeout_s: float = 60) -> None:
    """Poll ``url``/readyz until it answers 200. ``gone`` says why the server has stopped
    (None while it runs), and its output for the messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        reason = gone()
        assert reason is None, reason
        assert time.monotonic() < deadline, f"the server did not become ready within {timeout_s} s"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


@contextlib.contextmanager
def loopback_server(app: FastAPI) -> Iterator[int]:
    """uvicorn serving ``app`` on a free loopback port in a thread, ready; yields the port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    try:
        wait_for_server(f"http://127.0.0.1:{port}", lambda: None if thread.is_alive() else "gone")
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Reply:
    """One HTTP/1.1 response read off a raw socket, and whether the server then closed."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool | None  # None: not waited for

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(sock: socket.socket, *, await_close: bool = False) -> Reply:
    """The response on ``sock`` (it has a Content-Length); with ``await_close``, whether the
    server then closes the connection (read on for up to the socket's timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    closed = None
    if await_close:
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return Reply(int(status_line.split()[1]), headers, body, closed)


def exchange(port: int, *parts: bytes, timeout_s: float = 30, await_close: bool = False) -> Reply:
    """Send ``parts`` on a new loopback connection, one ``sendall`` each, and read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for part in parts:
            sock.sendall(part)
        return read_reply(sock, await_close=await_close)


def runtime_of(path: Path, **choice: str) -> Runtime:
    """The service's runtime on the model at ``path``, on the CPU with two threads, on the
    tests' runtime (``TEST_RUNTIME``) or the ``runtime`` and ``precision`` given."""
    return load_runtime(
        path,
        name=path.stem,
        providers=["CPUExecutionProvider"],
        require_gpu=False,
        device_id=0,
        gpu_mem_limit_mb=0,
        cudnn_conv_algo_search="HEURISTIC",
        trt_fp16=False,
        trt_cache_dir=None,
        intra_op_threads=2,
        **{**TEST_RUNTIME, **choice},
    )


@dataclass
class Server:
    """An ``fcn-serve`` process on a loopback port, and the file its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def launch(model: Path, log: Path, **settings: str) -> Server:
    """``fcn-serve --model M --host 127.0.0.1 --port P`` (python -m service.cli) with FCN_*
    ``settings``, once /readyz answers 200."""
    port = free_port()
    env = server_environment(model, port="1", **settings)  # the flag below wins
    del env["FCN_MODEL_PATH"]
    flags = ["--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *flags],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=sink,
        )
    server = Server(process, f"http://127.0.0.1:{port}", port, log)
    try:
        wait_for_server(server.url, lambda: None if process.poll() is None else server.output())
    except AssertionError as exc:
        server.stop()
        raise AssertionError(f"the server did not become ready: {exc}\n{server.output()}") from None
    return server
