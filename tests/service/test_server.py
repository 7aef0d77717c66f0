"""The service as users run it: real processes, a real uvicorn on a loopback port, signals.

Each test here starts Python processes, so they are few and share one server (the burst
test needs a small queue and starts its own); the SIGTERM test stops the shared server and
therefore comes last.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.images import encode, pattern
from tests.service.support import (
    PNG,
    ROOT,
    Server,
    free_port,
    launch,
    metric,
    png_labels,
    read_reply,
    server_environment,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``fcn-serve`` on a free loopback port, ready; shared by the tests of this module."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = launch(
        model_path,
        log,
        warmup_sizes="16x16",
        intra_op_threads="2",
        drain_delay_s="1",
        drain_timeout_s="20",
        access_log="false",
    )
    yield server
    server.stop()


def test_segments_over_the_wire_in_every_input_mode(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        multipart = client.post("/segment", files={"image": ("a.png", PNG, "image/png")})
        raw = client.post("/segment", content=PNG, headers={"content-type": "image/png"})
        as_json = client.post(
            "/segment",
            content=PNG,
            headers={"content-type": "application/octet-stream", "accept": "application/json"},
        )
        missing = client.get("/nope")
    assert multipart.status_code == raw.status_code == as_json.status_code == 200
    assert multipart.content == raw.content
    assert png_labels(raw.content).shape == (45, 61)
    assert (as_json.json()["width"], as_json.json()["height"]) == (61, 45)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            "POST /segment HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
            f"Content-Length: {10**10}\r\n\r\n"
        )
        sock.sendall(head.encode())  # and not one byte of the body
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"


def test_the_container_healthcheck_asks_the_running_server(server: Server) -> None:
    port = str(server.port)

    def healthcheck(port: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "FCN_PORT": port}
        command = [sys.executable, "-m", "service.healthcheck"]
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=30, check=False
        )

    healthy = healthcheck(port)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert '/readyz 200 {"status":"ready"' in healthy.stdout
    nobody = healthcheck(str(free_port()))
    assert nobody.returncode == 1
    assert "no answer" in nobody.stdout


def test_the_server_process_has_not_loaded_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps


def test_the_app_imports_contract_but_never_torch_or_model(model_path: Path) -> None:
    script = """
import asyncio, json, sys
import httpx
from service.main import create_app

async def main():
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.01)
            png = open(sys.argv[1], "rb").read()
            response = await client.post("/segment", files={"image": ("a", png)})
    loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "model", "torchvision")]
    contract = sorted(m for m in sys.modules if m.split(".")[0] == "contract")
    print(json.dumps({"status": response.status_code, "loaded": loaded, "contract": contract}))

asyncio.run(main())
"""
    image = model_path.parent / "probe.png"
    image.write_bytes(PNG)
    result = subprocess.run(
        [sys.executable, "-c", script, str(image)],
        env=server_environment(model_path, warmup_sizes="16x16"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The ONNX file is the whole contract: the rules come from contract/, never from model/.
    assert report["status"] == 200
    assert report["loaded"] == []
    assert {"contract.decode", "contract.encode", "contract.schema"} <= set(report["contract"])


QUEUE = 3


def test_a_burst_beyond_the_queue_is_refused_before_its_bodies_are_read(
    model_path: Path, tmp_path: Path
) -> None:
    """FCN_MAX_QUEUE=Q: Q uploads stalled halfway hold every place, so of 3Q more complete
    uploads Q wait in line (as long as the queue) and each of the other 2Q is answered 503,
    none with one byte of its body read; the Q then finish and the line is served.

    On the old code this fails: the queue was only checked, not reserved, before the body,
    and a request counted only once its body was in, so the stalled uploads held no place,
    the 2Q passed the check and had their bodies read in full (and there was neither
    fcn_requests_admitted to wait for nor fcn_request_body_bytes_total to read).
    """
    server = launch(
        model_path,
        tmp_path / "server.log",
        max_queue=str(QUEUE),
        warmup_sizes="16x16",
        intra_op_threads="2",
        access_log="false",
    )
    half = len(PNG) // 2
    head = (
        "POST /segment HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(PNG)}\r\n\r\n"
    ).encode()
    stalled: list[socket.socket] = []

    def scrape(name: str) -> float:
        return metric(httpx.get(f"{server.url}/metrics", timeout=10).text, name)

    def upload(_: int) -> httpx.Response:
        headers = {"content-type": "image/png"}
        return httpx.post(f"{server.url}/segment", content=PNG, headers=headers, timeout=30)

    try:
        for _ in range(QUEUE):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            stalled.append(sock)
            sock.sendall(head + PNG[:half])
        deadline = time.monotonic() + 30
        while scrape("fcn_requests_admitted") < QUEUE or (
            scrape("fcn_request_body_bytes_total") < QUEUE * half
        ):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.01)
        assert scrape("fcn_request_body_bytes_total") == QUEUE * half

        pool = ThreadPoolExecutor(3 * QUEUE)
        burst = [pool.submit(upload, i) for i in range(3 * QUEUE)]
        finished = as_completed(burst)
        refused = [next(finished).result() for _ in range(2 * QUEUE)]
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["code"] == "overloaded"
            assert (
                error["message"] == f"{QUEUE} requests are in the service (the limit); retry later"
            )
        while scrape("fcn_requests_awaiting_place") < QUEUE:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.01)
        # Not one byte of the burst's bodies was read; the Q still hold their places.
        assert scrape("fcn_request_body_bytes_total") == QUEUE * half
        assert scrape("fcn_requests_admitted") == QUEUE

        for sock in stalled:
            sock.sendall(PNG[half:])
        for sock in stalled:
            reply = read_reply(sock)
            assert reply.status == 200, reply.body[:300]
            assert reply.headers["content-type"] == "image/png"
            assert png_labels(reply.body).shape == (45, 61)
        in_line = [f.result(30) for f in burst if f.result(30) not in refused]
        pool.shutdown()
        assert [r.status_code for r in in_line] == [200] * QUEUE
        assert scrape("fcn_request_body_bytes_total") == 2 * QUEUE * len(PNG)
        assert scrape("fcn_requests_admitted") == 0
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_sigterm_drains_in_flight_requests_then_exits(server: Server, big_image: bytes) -> None:
    responses: dict[str, httpx.Response] = {}

    def post(name: str, data: bytes) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            responses[name] = client.post("/segment", files={"image": ("a", data)})

    small = encode(pattern(20, 24), "PNG")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        running = threading.Thread(target=post, args=("running", big_image))
        running.start()
        while metric(client.get("/metrics").text, "fcn_batches_running") < 1:
            time.sleep(0.005)
        queued = threading.Thread(target=post, args=("queued", small))
        queued.start()
        while metric(client.get("/metrics").text, "fcn_queue_depth") < 1:
            time.sleep(0.005)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        # During the drain delay the server still answers, but not as ready.
        ready = client.get("/readyz")
        live = client.get("/livez")
    running.join(60)
    queued.join(60)
    returncode = server.process.wait(60)
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    assert live.status_code == 200
    assert responses["running"].status_code == 200
    assert png_labels(responses["running"].content).shape == (2000, 2000)
    assert responses["queued"].status_code == 200
    assert np.asarray(png_labels(responses["queued"].content)).shape == (20, 24)
    # uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert returncode in (0, -signal.SIGTERM), server.output()
    output = server.output()
    assert "draining" in output
    assert "Finished server process" in output
