"""A real `fcn-serve` process on a loopback port, for the service benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(model: Path, port: int, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the service on ``model`` with ``settings`` (FCN_* variables) and wait until it is
    ready; the caller's own FCN_* variables are left out so they cannot skew a run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "FCN_MODEL_PATH": str(model),
            "FCN_HOST": "127.0.0.1",
            "FCN_PORT": str(port),
            "FCN_ACCESS_LOG": "false",
            "FCN_LOG_LEVEL": "warning",
            **settings,
        }
    )
    process = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the service did not start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the service did not become ready in 120 s")
