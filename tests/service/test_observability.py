"""What an operator sees: the process's own metrics, one server process per container, request
ids on every answer and log line, text or JSON logs, and probes kept out of the access log."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI

from service import logs
from service.cli import run, server_options
from service.config import Settings
from service.main import create_app
from tests.service.support import (
    PNG,
    ROOT,
    free_port,
    metric,
    metrics,
    running,
    server_environment,
    settings,
    wait_for_server,
)

pytestmark = pytest.mark.anyio

HEX_ID = re.compile(r"[0-9a-f]{32}")
PROBES = ["/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"]
# The loggers fcn-serve's logging configuration sets up.
LOGGERS = ["uvicorn", "uvicorn.error", "uvicorn.access", logs.SERVICE_LOGGER, logs.ACCESS_LOGGER]


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Applies fcn-serve's logging configuration (``configure(format)``); ``read()`` gives the
    (stdout, stderr) lines written since. The loggers are restored afterwards."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in LOGGERS
        for logger in [logging.getLogger(name)]
    }

    class Lines:
        def configure(self, log_format: logs.LogFormat) -> None:
            logging.config.dictConfig(logs.logging_config(log_format, "info"))

        def read(self) -> tuple[list[str], list[str]]:
            out, err = capsys.readouterr()
            return out.splitlines(), err.splitlines()

    yield Lines()
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def talking_app(model: Path, **overrides: Any) -> FastAPI:
    """The real app, plus routes that log while serving (on the event loop and in a worker
    thread) and one that fails as a bug would."""
    app = create_app(settings(model, **overrides))
    logger = logging.getLogger("fcn.service")

    async def talk() -> dict[str, str]:
        logger.warning("on the loop")
        await anyio.to_thread.run_sync(logger.warning, "in a thread")
        return {}

    async def fail() -> None:
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            logger.exception("caught and logged")
            raise

    app.add_api_route("/talk", talk)
    app.add_api_route("/fail", fail)
    return app


async def test_metrics_show_the_process_memory_gc_and_python_version(model_path: Path) -> None:
    async with running(create_app(settings(model_path))) as client:
        text = await metrics(client)
    assert metric(text, "process_resident_memory_bytes") > 10 * 2**20  # ONNX Runtime alone
    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "process_open_fds") > 0
    assert metric(text, "process_start_time_seconds") > 0
    assert "python_gc_collections_total" in text
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert metric(text, "python_info", minor=str(sys.version_info.minor)) == 1
    assert f'version="{version}.' in text


def test_fcn_serve_refuses_several_workers_saying_why(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    monkeypatch.setenv("FCN_WORKERS", "4")
    with pytest.raises(SystemExit) as caught:
        run(["--check-config"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "FCN_WORKERS: Value error, 4 server processes in one container" in err
    assert "run one per container and scale with containers or replicas" in err
    with pytest.raises(SystemExit):
        run(["--check-config", "--workers", "2"])
    assert "FCN_WORKERS: Value error, 2 server processes" in capsys.readouterr().err
    # One is the default, still accepted by name (existing configurations keep working).
    monkeypatch.setenv("FCN_WORKERS", "1")
    run(["--check-config"])
    assert "FCN_WORKERS=1" in capsys.readouterr().out
    assert server_options(Settings(model_path=model_path))["workers"] == 1


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("3f2c0a7e-5b1d-4c8e-9f00-1a2b3c4d5e6f", True),
        ("Root=1-67891233-abcdef012345678912345678", True),  # AWS ALB's X-Amzn-Trace-Id
        ("a" * 128, True),
        ("a" * 129, False),
        ("two words", False),
        ('"><script>', False),
        ("", False),
    ],
    ids=["uuid", "aws", "longest", "too-long", "space", "markup", "empty"],
)
async def test_a_sane_request_id_is_kept_and_any_other_replaced(
    model_path: Path, given: str, kept: bool
) -> None:
    async with running(create_app(settings(model_path))) as client:
        response = await client.get("/v1/model", headers={"x-request-id": given})
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    if kept:
        assert echoed == given
    else:
        assert HEX_ID.fullmatch(echoed), echoed


async def test_every_answer_carries_a_request_id_even_errors(model_path: Path) -> None:
    app = talking_app(model_path)
    async with running(app) as client:
        answers = {
            "segment": await client.post(
                "/segment", content=PNG, headers={"content-type": "image/png"}
            ),
            "unsupported": await client.post(
                "/segment", content=b"x", headers={"content-type": "text/plain"}
            ),
            "bad-parameter": await client.post(
                "/segment?format=gif", content=PNG, headers={"content-type": "image/png"}
            ),
            "not-found": await client.get("/nowhere"),
            "wrong-method": await client.delete("/livez"),
            "internal": await client.get("/fail"),
            "probe": await client.get("/livez"),
        }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "segment": 200,
        "unsupported": 415,
        "bad-parameter": 422,
        "not-found": 404,
        "wrong-method": 405,
        "internal": 500,
        "probe": 200,
    }
    ids = [response.headers.get("x-request-id", "") for response in answers.values()]
    assert all(HEX_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)  # one per request


async def test_every_line_logged_while_serving_carries_the_request_id(
    model_path: Path, log_lines: Any
) -> None:
    log_lines.configure("text")
    app = talking_app(model_path)
    async with running(app) as client:
        log_lines.read()  # start-up's lines
        talk = await client.get("/talk", headers={"x-request-id": "req-talk-1"})
        failed = await client.get("/fail")
        out, err = log_lines.read()
    assert talk.status_code == 200
    assert failed.status_code == 500
    fail_id = failed.headers["x-request-id"]
    assert "WARNING:  on the loop request_id=req-talk-1" in err
    assert "WARNING:  in a thread request_id=req-talk-1" in err
    assert f"ERROR:    caught and logged request_id={fail_id}" in err
    # The bug's traceback, logged by the service (not the server) with the id.
    assert f"ERROR:    unhandled error in GET /fail; answered 500 request_id={fail_id}" in err
    assert err.count("RuntimeError: a bug") == 2  # the route's own line and the service's
    line = r'INFO:     127\.0\.0\.1:\d+ - "GET {} HTTP/1\.1" {} \d+\.\d ms request_id={}'
    assert len(out) == 2
    assert re.fullmatch(line.format("/talk", 200, "req-talk-1"), out[0]), out[0]
    assert re.fullmatch(line.format("/fail", 500, fail_id), out[1]), out[1]
    # Lines outside a request (the shutdown's) carry none.
    _, err = log_lines.read()
    assert any("draining" in line for line in err)
    assert not any("request_id=" in line for line in err)


async def test_json_logs_are_one_object_per_line_with_the_access_fields(
    model_path: Path, log_lines: Any
) -> None:
    log_lines.configure("json")
    app = talking_app(model_path, log_format="json")
    async with running(app) as client:
        segment = await client.post(
            "/segment?format=json",
            content=PNG,
            headers={"content-type": "image/png", "x-request-id": "abc-123"},
        )
        missing = await client.get("/nowhere")
        await client.get("/talk")
        failed = await client.get("/fail")
    out, err = log_lines.read()
    records = [json.loads(line) for line in out + err]  # every line is one JSON object
    assert all(
        {"time", "level", "logger", "message", "request_id"} <= set(record) for record in records
    )
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    # (wait_ready's polls of /readyz while warming up are logged too: they failed)
    access = [a for a in map(json.loads, out) if a["path"] != "/readyz"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/segment", 200),
        ("GET", "/nowhere", 404),
        ("GET", "/talk", 200),
        ("GET", "/fail", 500),
    ]
    first = access[0]
    assert first["logger"] == "fcn.access"
    assert first["level"] == "INFO"
    assert first["request_id"] == "abc-123" == segment.headers["x-request-id"]
    assert first["query"] == "format=json"
    assert first["client"].startswith("127.0.0.1:")
    assert isinstance(first["duration_ms"], float)
    assert first["duration_ms"] > 0
    assert access[1]["request_id"] == missing.headers["x-request-id"]
    service = {r["message"]: r for r in map(json.loads, err) if r["logger"] == "fcn.service"}
    assert service["on the loop"]["request_id"] == access[2]["request_id"]
    assert service["in a thread"]["request_id"] == access[2]["request_id"]
    caught = service["caught and logged"]
    assert caught["level"] == "ERROR"
    assert caught["request_id"] == failed.headers["x-request-id"]
    assert "RuntimeError: a bug" in caught["exception"]  # the traceback, inside its one line
    ready = next(message for message in service if message.startswith("warm-up"))
    assert service[ready]["request_id"] is None  # logged outside any request


@pytest.mark.parametrize("log_probes", [False, True], ids=["default", "FCN_LOG_PROBES"])
async def test_probes_stay_out_of_the_access_log_unless_asked_but_failures_never(
    model_path: Path, log_lines: Any, log_probes: bool
) -> None:
    log_lines.configure("text")
    app = create_app(settings(model_path, log_probes=log_probes))
    async with running(app) as client:
        log_lines.read()
        for path in PROBES:
            assert (await client.get(path)).status_code == 200
        await client.get("/v1/model")
        app.state.service.drain()  # /readyz now fails: the load balancer takes it out
        assert (await client.get("/readyz")).status_code == 503
        out, _ = log_lines.read()
    logged = [re.search(r'"GET (\S+) HTTP/1\.1" (\d+)', line) for line in out]
    seen = [(m[1], int(m[2])) for m in logged if m]
    probes = [(path, 200) for path in PROBES] if log_probes else []
    assert seen == [*probes, ("/v1/model", 200), ("/readyz", 503)]


async def test_the_access_log_setting_turns_every_access_line_off(
    model_path: Path, log_lines: Any
) -> None:
    log_lines.configure("text")
    app = talking_app(model_path, access_log=False, log_probes=True)
    async with running(app) as client:
        log_lines.read()
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/talk", headers={"x-request-id": "quiet"})).status_code == 200
        out, err = log_lines.read()
    assert out == []
    assert "WARNING:  on the loop request_id=quiet" in err  # the service's own lines stay


@pytest.mark.slow
def test_fcn_serve_writes_json_lines_only(model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    env = server_environment(
        model_path,
        host="127.0.0.1",
        port=str(port),
        warmup_sizes="16x16",
        intra_op_threads="2",
        log_format="json",
    )
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli"], env=env, cwd=ROOT, stdout=stdout, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, lambda: None if process.poll() is None else err.read_text())
        segment = httpx.post(
            f"{url}/segment",
            content=PNG,
            headers={"content-type": "image/png", "x-request-id": "wire-1"},
            timeout=30,
        )
        assert segment.status_code == 200
        assert segment.headers["x-request-id"] == "wire-1"
        assert httpx.get(f"{url}/nowhere").headers["x-request-id"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    # uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert process.returncode in (0, -signal.SIGTERM), err.read_text()
    lines = out.read_text().splitlines() + err.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # nothing but JSON, uvicorn's lines too
    messages = [(r["logger"], r["message"]) for r in records]
    assert ("uvicorn.error", "Application startup complete.") in messages
    # One line per request, the service's (uvicorn's own is off); the readiness polls that
    # succeeded are out (those made while it warmed up answered 503, and are in).
    access = [r for r in records if r["logger"] == "fcn.access"]
    answers = [(a["path"], a["status"]) for a in access if a["status"] != 503]
    assert answers == [("/segment", 200), ("/nowhere", 404)]
    assert access[0]["request_id"] == "wire-1"
    assert all(r["logger"] != "uvicorn.access" for r in records)
