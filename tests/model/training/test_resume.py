"""Exact resumption: RNG states round-trip, a checkpoint resolves into one starting state,
a run stopped and resumed repeats the uninterrupted one, solver flags apply from the first
resumed step but the optimizer cannot change, Ctrl-C keeps the steps done, and a resume
with nothing left to train is refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.cli import main
from model.devices import DeviceError, resolve_device
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import TORCHVISION
from model.training.config import ConfigError
from model.training.resume import (
    Start,
    rng_state,
    set_rng_state,
    starting_state,
    training_state,
)
from model.training.runlog import BEST, LAST, LOG
from model.training.solver import make_optimizer
from model.training.train import train
from tests.model.training.support import (
    ROOT,
    log_records,
    subprocess_env,
    tiny_config,
    train_losses,
)


def test_rng_state_round_trips_and_says_what_it_cannot_restore() -> None:
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert state["cuda"] is None  # a CPU run has no CUDA RNG to save
    expected = torch.rand(3)
    assert set_rng_state(state, cpu) == ""
    assert torch.equal(torch.rand(3), expected)
    saved_on_gpu = {**state, "cuda": torch.zeros(16, dtype=torch.uint8)}
    assert "saved on CUDA" in set_rng_state(saved_on_gpu, cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_of_the_run_device_round_trips_and_missing_devices_are_named() -> None:
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    state = rng_state(device)
    expected = torch.rand(3, device=device)
    assert set_rng_state(state, device) == ""
    assert torch.equal(torch.rand(3, device=device), expected)
    assert "saved off CUDA" in set_rng_state({**state, "cuda": None}, device)
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"--device 'cuda:{count}': this machine has"):
        resolve_device(f"cuda:{count}")


def test_a_checkpoint_resolves_into_the_state_its_run_starts_from() -> None:
    """No ``--resume``: the defaults. A checkpoint: its step, metrics, weights and solver
    state, its class weights for a balanced run only; refused without a training state,
    with unusable class weights or with nothing left to train."""
    assert starting_state("", None, max_iter=5, balanced=True) == Start()
    spec = ModelSpec("fcn32s", 3, width=1 / 32)
    net = build_fcn(spec)
    optimizer = make_optimizer(net, "sgd", 0.1, momentum=0.9, weight_decay=0, bias_lr_mult=2)
    saved = training_state(
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        [rng_state(torch.device("cpu"))],
        best_mean_iu=0.25,
        world_size=1,
        batch_size=2,
        class_weights=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        val_loss=1.5,
    )
    checkpoint = Checkpoint(
        spec=spec,
        state_dict=net.state_dict(),
        classes=["a", "b", "c"],
        palette=[(0, 0, 0), (1, 1, 1), (2, 2, 2)],
        preprocessing=TORCHVISION,
        metrics={"mean_iu": 0.25},
        config={"optimizer": "sgd"},
        iteration=3,
        training_state=saved,
    )

    start = starting_state("last.pt", checkpoint, max_iter=5, balanced=True)
    assert (start.iteration, start.best_mean_iu, start.metrics, start.val_loss) == (
        3, 0.25, {"mean_iu": 0.25}, 1.5
    )  # fmt: skip
    assert start.keep_log_until == 3
    assert start.weights is not None
    assert (start.weights.spec, start.weights.classes) == (spec, ["a", "b", "c"])
    assert start.class_weights is not None
    assert start.class_weights.dtype == torch.float32
    assert start.solver is not None
    assert (start.solver.trained_with, start.solver.batch_size, len(start.solver.rng)) == (
        "sgd", 2, 1
    )  # fmt: skip
    assert starting_state("last.pt", checkpoint, max_iter=5, balanced=False).class_weights is None

    with pytest.raises(ConfigError, match="last.pt is already at iteration 3; nothing to train"):
        starting_state("last.pt", checkpoint, max_iter=3, balanced=False)
    with pytest.raises(CheckpointError, match="last.pt: holds no training state"):
        starting_state(
            "last.pt", replace(checkpoint, training_state=None), max_iter=5, balanced=False
        )
    misfit = replace(checkpoint, training_state={**saved, "class_weights": torch.ones(2)})
    with pytest.raises(CheckpointError, match="last.pt: unusable class weights"):
        starting_state("last.pt", misfit, max_iter=5, balanced=True)


@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run(synth: Path, tmp_path: Path) -> None:
    """Stop at 3, resume to 7 (with a worker process this time): same losses, same weights."""
    settings = {
        "arch": "fcn16s", "max_iter": 7, "crop_size": [32, 32], "scale_range": [0.75, 1.25],
        "flip": True, "seed": 3, "val_every": 2,
    }  # fmt: skip
    whole = tmp_path / "whole"
    train(tiny_config(synth, whole, **settings))
    parts = tmp_path / "parts"
    train(tiny_config(synth, parts, **{**settings, "max_iter": 3}))
    resume = ["train", "--resume", str(parts / LAST), "--max-iter", "7", "--workers", "1"]
    assert main([*resume, "--no-progress"]) == 0

    assert len(train_losses(whole)) == 7
    assert train_losses(parts) == train_losses(whole)
    a, b = load_checkpoint(whole / LAST), load_checkpoint(parts / LAST)
    assert b.iteration == 7
    for name, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[name]), name
    assert a.training_state is not None
    assert b.training_state is not None
    momentum_a = a.training_state["optimizer"]["state"]
    momentum_b = b.training_state["optimizer"]["state"]
    for key in momentum_a:
        assert torch.equal(momentum_a[key]["momentum_buffer"], momentum_b[key]["momentum_buffer"])
    assert b.config["workers"] == 1


@pytest.mark.slow
def test_ctrl_c_keeps_the_steps_done_but_no_unscored_best(synth: Path, tmp_path: Path) -> None:
    """Interrupted before any validation: last.pt resumes, best.pt is not claimed; a resume
    with nothing left to train says so instead of rewriting the run."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "model.cli", "train", "--data", str(synth), "--arch", "fcn32s",
        "--width", "0.03125", "--init", "none", "--loss", "mean", "--lr", "0.001",
        "--max-iter", "100000", "--val-every", "100000", "--log-every", "1", "--batch-size", "2",
        "--workers", "0", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    # Ctrl-C as a terminal delivers it, even where this suite was started in the background,
    # which leaves SIGINT ignored (SIG_IGN, inherited across exec) in every process it starts.
    # A handler is not inherited: the child starts with SIGINT's default, as from a shell.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 120
        while not ((out / LOG).exists() and log_records(out, "train")):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        said, err = process.communicate(timeout=120)
    finally:
        process.kill()  # never left training on the suite's cores after a failure
    assert process.returncode == 130, err[-3000:]
    assert "interrupted: saved" in said
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == [LAST]
    stopped = load_checkpoint(out / LAST).iteration
    assert stopped >= 1

    resume = ["train", "--resume", str(out / LAST), "--no-progress", "--workers", "0"]
    assert main([*resume, "--max-iter", str(stopped)]) == 2
    assert main([*resume, "--max-iter", str(stopped + 1), "--val-every", "1"]) == 0
    best = load_checkpoint(out / BEST)
    assert best.iteration == stopped + 1
    assert "mean_iu" in best.metrics


def test_resume_takes_changed_solver_flags_and_refuses_another_optimizer(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config, not the saved optimiser, says lr multipliers, momentum and decay."""
    out = tmp_path / "run"
    train(tiny_config(synth, out, max_iter=1, val_every=1, check_data=False))
    first = load_checkpoint(out / LAST)
    resume = ["train", "--resume", str(out / LAST), "--no-progress"]
    flags = ["--weight-decay", "0.1", "--bias-lr-mult", "0", "--momentum", "0.5"]
    assert main([*resume, "--max-iter", "2", *flags]) == 0
    second = load_checkpoint(out / LAST)
    assert second.training_state is not None
    groups = second.training_state["optimizer"]["param_groups"]
    settings = [(g["weight_decay"], g["lr_mult"], g["momentum"]) for g in groups]
    assert settings == [(0.1, 1.0, 0.5), (0.0, 0.0, 0.5)]
    # Biases at lr x 0 stayed put in step 2; the weights moved.
    biases = [name for name in second.state_dict if name.endswith(".bias")]
    for name in biases:
        assert torch.equal(second.state_dict[name], first.state_dict[name]), name
    assert not torch.equal(second.state_dict["fc7.weight"], first.state_dict["fc7.weight"])

    assert main([*resume, "--max-iter", "3", "--optimizer", "adamw"]) == 2
    err = capsys.readouterr().err
    assert f"optimizer: {out / LAST} was trained with sgd" in err
    assert "cannot switch to --optimizer adamw" in err
    assert load_checkpoint(out / LAST).iteration == 2
