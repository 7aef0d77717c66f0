"""``fcn-serve``: settings checked and named, every setting listed by --help, uvicorn's options,
the app factory, and a clean exit when start-up fails."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.cli import run, server_options
from service.config import OTHER_VARIABLES, Settings, UnknownSettingError
from service.logs import ACCESS_LOGGER, SERVICE_LOGGER, JsonFormatter, TextFormatter
from service.main import create_app
from service.providers import missing_library
from tests.service.support import ROOT, server_environment


@pytest.fixture
def kept_logging() -> Iterator[None]:
    """Undoes the logging configuration uvicorn.Config applies (the service's and uvicorn's
    loggers), so that later tests log as before."""
    names = ["uvicorn", "uvicorn.error", "uvicorn.access", SERVICE_LOGGER, ACCESS_LOGGER]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        for handler in set(logger.handlers) - set(handlers):
            handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


@pytest.mark.usefixtures("kept_logging")
def test_fcn_serve_keeps_idle_connections_longer_than_load_balancers(model_path: Path) -> None:
    options = server_options(Settings(model_path=model_path, keep_alive_s=90, drain_timeout_s=7.5))
    config = uvicorn.Config("service.main:create_app", **options)
    assert config.timeout_keep_alive == 90
    assert config.timeout_graceful_shutdown == 8
    defaults = server_options(Settings(model_path=model_path))
    assert defaults["timeout_keep_alive"] > 60  # AWS ALB's idle timeout
    # uvicorn's own access line is off: the service writes one (with the request id).
    assert config.access_log is False
    assert isinstance(logging.getLogger(SERVICE_LOGGER).handlers[0].formatter, TextFormatter)
    options = server_options(Settings(model_path=model_path, log_format="json"))
    uvicorn.Config("service.main:create_app", **options)
    for name in ("uvicorn.error", SERVICE_LOGGER, ACCESS_LOGGER):
        (handler,) = logging.getLogger(name).handlers or logging.getLogger("uvicorn").handlers
        assert isinstance(handler.formatter, JsonFormatter), name


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


@pytest.mark.slow
def test_fcn_serve_exits_cleanly_when_a_required_gpu_is_missing(
    model_path: Path, cuda_works: bool
) -> None:
    if cuda_works:
        pytest.skip("a CUDA device works here")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli"],
        env=server_environment(
            model_path, providers="cuda,cpu", require_gpu="true", port="0", runtime="onnxruntime"
        ),
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


def test_a_mistyped_setting_stops_the_start_naming_the_setting_it_resembles(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    monkeypatch.setenv("FCN_MAX_BATCHSIZE", "8")
    monkeypatch.setenv("FCN_WOBBLE", "1")
    with pytest.raises(SystemExit) as caught:
        run(["--check-config"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        "fcn-serve: bad settings: FCN_MAX_BATCHSIZE is not a setting (did you mean "
        "FCN_MAX_BATCH_SIZE?); FCN_WOBBLE is not a setting (fcn-serve --help lists the settings)\n"
    )
    # The app built from the environment (as `uvicorn --factory` builds it) refuses too.
    with pytest.raises(UnknownSettingError, match="FCN_MAX_BATCHSIZE is not a setting"):
        create_app()
    # The model zoo's and compose's own variables are not the service's, and are left alone.
    monkeypatch.delenv("FCN_MAX_BATCHSIZE")
    monkeypatch.delenv("FCN_WOBBLE")
    for variable in OTHER_VARIABLES:
        monkeypatch.setenv(variable, "x")
    run(["--check-config"])
    assert "FCN_MAX_BATCH_SIZE=0" in capsys.readouterr().out


def test_check_config_prints_the_settings_in_force_as_the_environment_reads_them(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", str(model_path))
    monkeypatch.setenv("FCN_WARMUP_SIZES", "64x48,16x16")
    run(["--check-config", "--port", "9000"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(Settings.model_fields)  # one a setting, nothing else
    printed = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert printed["FCN_PORT"] == "9000"  # the flag, over the environment
    assert printed["FCN_WARMUP_SIZES"] == "64x48,16x16"
    assert printed["FCN_MODEL_PATH"] == str(model_path)
    assert "# FCN_TRT_CACHE_DIR is unset" in lines
    # Read back, the same settings.
    for name in Settings.model_fields:
        monkeypatch.delenv(f"FCN_{name.upper()}", raising=False)
    for variable, value in printed.items():
        monkeypatch.setenv(variable, value)
    assert Settings() == Settings(  # type: ignore[call-arg]
        model_path=model_path, port=9000, warmup_sizes=((64, 48), (16, 16))
    )
