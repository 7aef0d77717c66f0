"""Helpers of the training tests: a tiny CPU run's config, the run log's records, and the
environment a subprocess (``python -m model.cli``, torchrun) needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.training.config import TrainConfig
from model.training.runlog import LOG

ROOT = Path(__file__).resolve().parents[3]


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    """A few CPU steps of a 1/32-width FCN-32s from a random trunk."""
    config = TrainConfig(
        arch="fcn32s",
        width=1 / 32,
        init="none",
        data=str(data),
        loss="mean",
        lr=1e-3,
        batch_size=2,
        max_iter=4,
        val_every=4,
        log_every=1,
        workers=0,
        out=str(out),
        progress=False,
    )
    return replace(config, **changes)


def log_records(out: Path, split: str) -> list[dict[str, object]]:
    lines = (out / LOG).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def train_losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in log_records(out, "train")]  # type: ignore[arg-type]


def subprocess_env() -> dict[str, str]:
    """The environment of a ``python -m model.cli`` or torchrun child: this checkout, one
    thread per process."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str]) -> None:
    """``fcn ARGS`` in two processes on gloo under torchrun; fails the test if it fails."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "model.cli", *args,
    ]  # fmt: skip
    result = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
