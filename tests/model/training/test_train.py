"""Training runs on CPU: the loss falls and mean IU beats the majority class, checkpoints
hold what eval and export need, resume is exact, a bad file stops the run before any step,
and two torchrun processes (gloo) train one model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from contract.palette import voc_colormap
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.datasets import DataError
from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.evaluation.metrics import ConfusionMatrix
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, TORCHVISION, Normalize
from model.training.config import TrainConfig
from model.training.train import BEST, LAST, LOG, PLOT, TrainingError, train

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", 24, 8, (48, 48), seed=0)


@pytest.fixture(scope="module")
def synth96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Larger images: objects big enough for a tiny net to learn in 200 steps."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth96", 24, 8, (96, 96), seed=0)


def tiny_config(data: Path, out: Path, **changes: object) -> TrainConfig:
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


def majority_mean_iu(data: Path, split: str) -> float:
    """Mean IU of predicting the most frequent class everywhere."""
    dataset = voc_dataset(data, split)
    targets = [dataset[i][1] for i in range(len(dataset))]
    counts = torch.bincount(torch.cat([t.flatten() for t in targets]).long(), minlength=256)
    majority = int(counts[: dataset.num_classes].argmax())
    confusion = ConfusionMatrix(dataset.num_classes)
    for t in targets:
        confusion.update(t, torch.full_like(t, majority))
    return confusion.compute().mean_iu


def test_short_run_learns_and_writes_everything(synth96: Path, tmp_path: Path) -> None:
    """From a random trunk: AdamW leaves the all-background solution within 200 steps."""
    out = tmp_path / "run"
    config = tiny_config(
        synth96, out, arch="fcn8s", width=1 / 16, optimizer="adamw", lr=2e-3, max_iter=200,
        val_every=100, log_every=20, batch_size=8,
    )  # fmt: skip
    best = train(config)
    assert best == out / BEST
    losses = [float(r["loss"]) for r in log_records(out, "train")]  # type: ignore[arg-type]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    val = log_records(out, "val")
    assert [r["iteration"] for r in val] == [100, 200]
    # Held-out images: the majority class everywhere scores about 0.15.
    baseline = majority_mean_iu(synth96, "val")
    ckpt = load_checkpoint(out / LAST)
    assert ckpt.metrics["mean_iu"] == pytest.approx(val[-1]["mean_iu"])
    assert ckpt.metrics["mean_iu"] > baseline + 0.15, (ckpt.metrics, baseline)
    assert set(ckpt.metrics) == {
        "pixel_accuracy",
        "mean_accuracy",
        "mean_iu",
        "frequency_weighted_iu",
    }
    # What evaluation and export read: classes, palette, preprocessing, data set, config.
    assert ckpt.classes == list(SYNTH_CLASSES)
    assert ckpt.palette[:2] == [(0, 0, 0), (128, 0, 0)]
    assert ckpt.preprocessing == TORCHVISION
    assert ckpt.dataset == f"voc:{synth96} (train, 24 images)"
    assert TrainConfig.from_dict(ckpt.config) == config
    assert ckpt.iteration == 200
    assert ckpt.training_state is not None
    assert set(ckpt.training_state) >= {"optimizer", "scaler", "rng", "best_mean_iu"}
    assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best_ckpt = load_checkpoint(out / BEST)
    assert best_ckpt.metrics["mean_iu"] == max(r["mean_iu"] for r in val)  # type: ignore[type-var]
    assert not list(out.glob("*.tmp"))


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
    assert (
        main(
            [
                "train",
                "--resume",
                str(parts / LAST),
                "--max-iter",
                "7",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )

    def losses(out: Path) -> list[float]:
        return [float(r["loss"]) for r in log_records(out, "train")]  # type: ignore[arg-type]

    assert len(losses(whole)) == 7
    assert losses(parts) == losses(whole)
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not ((out / LOG).exists() and log_records(out, "train")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    said, err = process.communicate(timeout=120)
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


def test_sum_loss_steps_alike_at_any_batch_size_and_process_count(
    synth: Path, tmp_path: Path
) -> None:
    """--loss sum is Caffe's normalize: false: pixels summed per image, averaged over the
    images of the batch (all processes' together). One image listed twice: batch 1, batch 2
    and two torchrun processes of batch 1 take the same first step."""
    data = Path(shutil.copytree(synth, tmp_path / "data"))
    (data / "ImageSets" / "Segmentation" / "twice.txt").write_text("train_000000\n" * 2)
    settings = {
        "loss": "sum", "lr": 1e-6, "max_iter": 1, "val_every": 1, "train_split": "twice",
        "val_split": "twice", "check_data": False,
    }  # fmt: skip
    train(tiny_config(data, tmp_path / "one", batch_size=1, **settings))
    train(tiny_config(data, tmp_path / "two", batch_size=2, **settings))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "model.cli", "train", "--data", str(data), "--arch", "fcn32s", "--width", "0.03125",
        "--init", "none", "--loss", "sum", "--lr", "1e-6", "--max-iter", "1", "--val-every", "1",
        "--batch-size", "1", "--train-split", "twice", "--val-split", "twice", "--no-check-data",
        "--workers", "0", "--out", str(tmp_path / "ddp"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Score layers start at zero, so step 1's score_fr.bias update depends on neither
    # dropout nor the trunk: it is -lr x 2 x the gradient of the loss.
    def bias_step(run: str) -> torch.Tensor:
        return load_checkpoint(tmp_path / run / LAST).state_dict["score_fr.bias"]

    one = bias_step("one")
    assert one.abs().max() > 0
    torch.testing.assert_close(bias_step("two"), one, rtol=1e-5, atol=0)
    torch.testing.assert_close(bias_step("ddp"), one, rtol=1e-5, atol=0)


def test_fine_tuning_keeps_the_names_of_the_data_or_of_classes(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init checkpoint: brings the parent's weights and preprocessing, not its names."""
    parent = build_fcn(ModelSpec("fcn32s", len(SYNTH_CLASSES), 1 / 32))
    parent_classes = [f"voc{i}" for i in range(len(SYNTH_CLASSES))]
    palette = [(i, i, i) for i in range(len(SYNTH_CLASSES))]
    parent_file = tmp_path / "parent.pt"
    save_checkpoint(
        Checkpoint(parent.spec, parent.state_dict(), parent_classes, palette, CAFFE), parent_file
    )
    settings = {
        "arch": "fcn16s", "init": f"checkpoint:{parent_file}", "max_iter": 1, "val_every": 1,
        "check_data": False,
    }  # fmt: skip
    train(tiny_config(synth, tmp_path / "data-names", **settings))
    ckpt = load_checkpoint(tmp_path / "data-names" / LAST)
    assert ckpt.classes == list(SYNTH_CLASSES)
    assert ckpt.palette[: len(SYNTH_CLASSES)] == voc_colormap(len(SYNTH_CLASSES))
    assert ckpt.preprocessing == CAFFE  # carried over with the weights
    printed = capsys.readouterr().out
    assert f"warning: init: {parent_file} names its classes otherwise" in printed
    assert "voc1 -> disc" in printed
    assert "dropped" not in printed  # a 32s parent leaves nothing behind in a 16s

    # Back a stage: the 8s's own skip has no place in a 16s, and the run says so.
    fcn8s = build_fcn(ModelSpec("fcn8s", len(SYNTH_CLASSES), 1 / 32))
    fcn8s_file = tmp_path / "fcn8s.pt"
    save_checkpoint(
        Checkpoint(fcn8s.spec, fcn8s.state_dict(), list(SYNTH_CLASSES), palette, CAFFE),
        fcn8s_file,
    )
    back = {**settings, "init": f"checkpoint:{fcn8s_file}"}
    train(tiny_config(synth, tmp_path / "back", **back))
    assert "fcn16s has no place for fcn8s's score_pool3" in capsys.readouterr().out

    named = ["sea", "disc", "square", "triangle", "ring", "bar"]
    train(tiny_config(synth, tmp_path / "flag-names", classes=named, **settings))
    assert load_checkpoint(tmp_path / "flag-names" / LAST).classes == named


def test_an_existing_run_is_not_overwritten(synth: Path, tmp_path: Path) -> None:
    config = tiny_config(synth, tmp_path / "run", max_iter=1)
    train(config)
    with pytest.raises(
        TrainingError, match=r"already holds a run \(last.pt\); continue it with --resume"
    ):
        train(config)


def test_bad_data_stops_the_run_before_any_step(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = Path(shutil.copytree(synth, tmp_path / "data"))
    broken = data / "SegmentationClass" / "val_000003.png"
    broken.unlink()
    out = tmp_path / "run"
    with pytest.raises(DataError, match=f"{broken}: missing label file for val_000003.jpg"):
        train(tiny_config(data, out))
    assert not out.exists()
    args = ["train", "--data", str(data), "--out", str(out), "--init", "none", "--width", "0.03125"]
    assert main(args) == 2
    assert f"{broken}: missing label file" in capsys.readouterr().err
    assert not out.exists()


def test_torchrun_two_processes_on_gloo(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "model.cli", "train", "--data", str(synth), "--arch", "fcn32s", "--width", "0.03125",
        "--init", "none", "--loss", "mean", "--lr", "0.001", "--max-iter", "3", "--val-every", "3",
        "--log-every", "1", "--batch-size", "2", "--workers", "0", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [BEST, LAST, LOG, PLOT]
    ckpt = load_checkpoint(out / LAST)
    assert ckpt.iteration == 3
    assert ckpt.training_state is not None
    assert ckpt.training_state["world_size"] == 2
    assert len(ckpt.training_state["rng"]) == 2  # each rank's RNG, for an exact resume
    # Rank 0 logs alone: one record per iteration, not two.
    assert [r["iteration"] for r in log_records(out, "train")] == [1, 2, 3]
    # The validation metrics were reduced over both ranks: they equal one process's
    # evaluation of the saved weights on the whole validation set.
    net = ckpt.build_model().eval()
    normalize = Normalize(ckpt.preprocessing)
    val = voc_dataset(synth, "val")
    confusion = ConfusionMatrix(len(SYNTH_CLASSES))
    with torch.no_grad():
        for i in range(len(val)):
            image, target = val[i]
            confusion.update(target, net(normalize(image[None])).argmax(1)[0])
    assert ckpt.metrics == pytest.approx(confusion.compute().summary())
