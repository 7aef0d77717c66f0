"""Training runs end to end on CPU: the loss falls and mean IU beats the majority class,
checkpoints hold what eval and export need, an existing run is not overwritten, a bad file
stops the run before any step, and two torchrun processes (gloo) train one model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.cli import main
from model.data.datasets import DataError
from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES
from model.evaluation.metrics import ConfusionMatrix
from model.nets.preprocessing import TORCHVISION, Normalize
from model.training.config import TrainConfig
from model.training.runlog import BEST, LAST, LOG, PLOT, TrainingError
from model.training.train import train
from tests.model.training.support import (
    log_records,
    tiny_config,
    torchrun,
    train_losses,
)


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


@pytest.mark.slow
def test_short_run_learns_and_writes_everything(synth96: Path, tmp_path: Path) -> None:
    """From a random trunk: AdamW leaves the all-background solution within 200 steps."""
    out = tmp_path / "run"
    config = tiny_config(
        synth96, out, arch="fcn8s", width=1 / 16, optimizer="adamw", lr=2e-3, max_iter=200,
        val_every=100, log_every=20, batch_size=8,
    )  # fmt: skip
    best = train(config)
    assert best == out / BEST
    losses = train_losses(out)
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


@pytest.mark.slow
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
        "train", "--data", str(data), "--arch", "fcn32s", "--width", "0.03125",
        "--init", "none", "--loss", "sum", "--lr", "1e-6", "--max-iter", "1", "--val-every", "1",
        "--batch-size", "1", "--train-split", "twice", "--val-split", "twice", "--no-check-data",
        "--workers", "0", "--out", str(tmp_path / "ddp"),
    ]  # fmt: skip
    torchrun(command)

    # Score layers start at zero, so step 1's score_fr.bias update depends on neither
    # dropout nor the trunk: it is -lr x 2 x the gradient of the loss.
    def bias_step(run: str) -> torch.Tensor:
        return load_checkpoint(tmp_path / run / LAST).state_dict["score_fr.bias"]

    one = bias_step("one")
    assert one.abs().max() > 0
    torch.testing.assert_close(bias_step("two"), one, rtol=1e-5, atol=0)
    torch.testing.assert_close(bias_step("ddp"), one, rtol=1e-5, atol=0)


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


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        "train", "--data", str(synth), "--arch", "fcn32s", "--width", "0.03125",
        "--init", "none", "--loss", "mean", "--lr", "0.001", "--max-iter", "3", "--val-every", "3",
        "--log-every", "1", "--batch-size", "2", "--workers", "0", "--out", str(out),
    ]  # fmt: skip
    torchrun(command)
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_and_eval_on_cuda(synth_voc: Path, tmp_path: Path, amp: str) -> None:
    from model.evaluation.evaluate import evaluate

    config = TrainConfig(
        arch="fcn8s", width=1 / 16, init="none", data=str(synth_voc), loss="mean", max_iter=3,
        val_every=3, batch_size=2, crop_size=[32], workers=0, out=str(tmp_path / "run"),
        progress=False, device="cuda", amp=amp,
    )  # fmt: skip
    best = train(config)
    result = evaluate(best, synth_voc, device="cuda", amp=amp, workers=0)
    assert result.metrics.summary() == pytest.approx(load_checkpoint(best).metrics)
