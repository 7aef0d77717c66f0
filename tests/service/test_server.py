"""The service as users run it: real processes, a real uvicorn on a loopback port, signals.

Each test here starts Python processes, so they are few and share one server; the SIGTERM
test stops that server and therefore comes last.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from service.config import Settings
from service.main import run
from service.runtime import missing_library
from tests.service.support import encode, metric, pattern, png_labels

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PNG = encode(pattern(45, 61), "PNG")


def environment(model: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({"FCN_MODEL_PATH": str(model), "FCN_PROVIDERS": "cpu"})
    env.update({f"FCN_{k.upper()}": v for k, v in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``fcn-serve`` (python -m service.main) on a free loopback port, ready."""
    port = free_port()
    env = environment(
        model_path,
        port="1",  # the flag below wins
        warmup_sizes="16x16",
        intra_op_threads="2",
        drain_delay_s="1",
        drain_timeout_s="20",
        access_log="false",
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    del env["FCN_MODEL_PATH"]
    flags = ["--model", str(model_path), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.main", *flags],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=sink,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, server.output()
        assert time.monotonic() < deadline, server.output()
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    yield server
    if process.poll() is None:
        process.kill()
        process.wait(10)


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
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
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
    port = server.url.rsplit(":", 1)[1]

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


def test_the_app_never_imports_torch_or_model(model_path: Path) -> None:
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
    print(json.dumps({"status": response.status_code, "loaded": loaded}))

asyncio.run(main())
"""
    image = model_path.parent / "probe.png"
    image.write_bytes(PNG)
    result = subprocess.run(
        [sys.executable, "-c", script, str(image)],
        env=environment(model_path, warmup_sizes="16x16"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"status": 200, "loaded": []}


def test_uvicorn_can_build_the_app_from_the_factory(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    config = uvicorn.Config("service.main:create_app", factory=True)
    config.load()
    assert config.loaded


def test_fcn_serve_names_a_missing_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FCN_MODEL_PATH", raising=False)
    monkeypatch.setenv("FCN_PORT", "http")
    with pytest.raises(SystemExit) as caught:
        run([])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "FCN_MODEL_PATH: Field required (set it, or pass --model PATH)" in err
    assert "FCN_PORT" in err


def test_fcn_serve_help_lists_every_setting_and_flags_are_checked_like_them(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        assert f"FCN_{name.upper()} " in out
        assert str(field.description) in " ".join(out.split())
    assert "[375x500]" in out
    assert "[CUDAExecutionProvider,CPUExecutionProvider]" in out

    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    monkeypatch.setenv("FCN_PORT", "8000")  # so that the flag's value is undone after
    with pytest.raises(SystemExit) as caught:
        run(["--port", "eighty"])
    assert caught.value.code == 2
    assert "FCN_PORT: Input should be a valid integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        run(["--prot", "80"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --prot" in capsys.readouterr().err


def test_fcn_serve_exits_cleanly_when_a_required_gpu_is_missing(
    model_path: Path, cuda_works: bool
) -> None:
    if cuda_works:
        pytest.skip("a CUDA device works here")
    result = subprocess.run(
        [sys.executable, "-m", "service.main"],
        env=environment(model_path, providers="cuda,cpu", require_gpu="true", port="0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3  # uvicorn's start-up failure
    assert "cannot start: FCN_REQUIRE_GPU is set" in result.stderr
    assert "runs on CPUExecutionProvider" in result.stderr
    if missing_library("CUDAExecutionProvider") is not None:  # then also in that process
        # Our one line names the missing library; ONNX Runtime's own red errors are not shown.
        assert "cannot open shared object file" in result.stderr
        assert "[E:onnxruntime" not in result.stderr


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
