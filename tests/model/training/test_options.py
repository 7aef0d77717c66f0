"""The paper's training options on tiny real nets: loss sampling over final-layer cells,
class-balanced weights, FCN-32s-fixed (score layers only), Caffe's iter_size, and the
validation loss beside the metrics; a resumed run with all of them repeats the whole one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contract.palette import IGNORE_INDEX, voc_colormap
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import TORCHVISION, Normalize
from model.training.distributed import Processes
from model.training.loop import Loss, Record, Run, RunState
from model.training.runlog import LAST
from model.training.solver import (
    class_frequency_weights,
    make_optimizer,
    sample_cells,
    segmentation_loss,
)
from model.training.train import train
from tests.model.training.support import log_records, tiny_config, train_losses

TINY = 1 / 32


def test_loss_sampling_keeps_whole_final_layer_cells_at_the_rate_asked() -> None:
    target = torch.randint(0, 3, (4, 100, 70))
    torch.manual_seed(0)
    sampled = sample_cells(target, 0.5)
    kept = sampled != IGNORE_INDEX
    assert torch.equal(sampled[kept], target[kept])
    # One draw per stride-32 cell: every 32 x 32 block (the last ones cut) is kept or not.
    for y in range(0, 100, 32):
        for x in range(0, 70, 32):
            block = kept[:, y : y + 32, x : x + 32].flatten(1)
            assert bool((block.all(1) | ~block.any(1)).all()), (y, x)
    many = sample_cells(torch.zeros(200, 64, 64, dtype=torch.long), 0.25)
    assert (many == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert sample_cells(target, 1.0) is target  # P = 1: nothing drawn, nothing changed


def test_sampled_loss_is_over_the_kept_pixels() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    sampled = sample_cells(target, 0.5)
    kept = sampled != IGNORE_INDEX
    assert 0 < int(kept.sum()) < kept.numel()
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    summed = segmentation_loss(logits, sampled, "sum")
    torch.testing.assert_close(summed, per_pixel[kept].sum() / 2)
    torch.testing.assert_close(segmentation_loss(logits, sampled, "mean"), per_pixel[kept].mean())


def test_balanced_weights_are_inverse_frequency_averaging_one_per_pixel() -> None:
    counts = torch.tensor([600, 300, 100, 0])
    weights = class_frequency_weights(counts)
    assert weights[3] == 0  # no pixel of it: never used
    torch.testing.assert_close(weights[:3] * counts[:3], torch.full((3,), 1000 / 3))
    assert float((weights * counts).sum() / counts.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_frequency_weights(torch.zeros(3))
    logits = torch.randn(1, 4, 5, 5)
    target = torch.randint(0, 3, (1, 5, 5))
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    weighted = segmentation_loss(logits, target, "sum", weight=weights)
    torch.testing.assert_close(weighted, (per_pixel * weights[target]).sum())


def test_balanced_class_weights_are_counted_from_the_labels_and_recorded(
    synth: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train(tiny_config(synth, out, class_weights="balanced", max_iter=2, val_every=2))
    dataset = voc_dataset(synth, "train")
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    for sample in dataset.samples:
        target = dataset.read_target(sample.target)
        counts += np.bincount(target[target != 255].ravel(), minlength=dataset.num_classes)
    expected = class_frequency_weights(torch.from_numpy(counts))
    ckpt = load_checkpoint(out / LAST)
    assert ckpt.training_state is not None
    torch.testing.assert_close(ckpt.training_state["class_weights"], expected)
    (setup,) = log_records(out, "setup")
    assert setup["class_weights"] == pytest.approx(expected.tolist())
    assert ckpt.config["class_weights"] == "balanced"


def test_score_only_trains_the_score_layers_and_leaves_the_trunk_bitwise(
    synth: Path, tmp_path: Path
) -> None:
    """FCN-32s-fixed, and on FCN-16s the skip's score layer moves too."""
    net = build_fcn(ModelSpec("fcn16s", len(SYNTH_CLASSES), TINY))
    initial = net.state_dict()
    parent = save_checkpoint(
        Checkpoint(net.spec, initial, list(SYNTH_CLASSES), voc_colormap(6), TORCHVISION),
        tmp_path / "parent.pt",
    )
    out = tmp_path / "run"
    init = f"checkpoint:{parent}"
    train(tiny_config(synth, out, arch="fcn16s", init=init, score_only=True, max_iter=3))
    trained = load_checkpoint(out / LAST)
    moved = {
        name.split(".")[0]
        for name, value in trained.state_dict.items()
        if not torch.equal(value, initial[name])
    }
    assert moved == {"score_fr", "score_pool4"}
    assert trained.training_state is not None
    optimized = sum(len(g["params"]) for g in trained.training_state["optimizer"]["param_groups"])
    assert optimized == 4  # two weights, two biases


def tiny_run(loss: Loss, seed: int = 0) -> Run:
    """A Run on an FCN-32s with random (nonzero) score layers; dropout off (eval mode)."""
    torch.manual_seed(seed)
    net = build_fcn(ModelSpec("fcn32s", 3, TINY))
    torch.nn.init.normal_(net.score_fr.weight, std=0.1)
    net.eval()
    optimizer = make_optimizer(net, "sgd", 1e-2, momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0)
    return Run(
        net=net,
        model=net,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        normalize=Normalize(TORCHVISION),
        device=torch.device("cpu"),
        autocast=None,
        procs=Processes(),
        out=Path("unused"),
        log=None,
        say=print,
        state=RunState(),
        record=Record(["a", "b", "c"], [(0, 0, 0)] * 3, TORCHVISION, "test", {}),
        loss=loss,
    )


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_iter_size_k_at_batch_one_steps_as_one_batch_of_k(mode: str) -> None:
    """Caffe's iter_size: K batches of one image, gradients summed with each loss / K, take
    the step of one batch of K (mean loss: images with the same labelled pixel count)."""
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 3, (3, 40, 40), generator=generator)
    whole = tiny_run(Loss(mode, iter_size=1))
    parts = tiny_run(Loss(mode, iter_size=3))
    for _ in range(2):  # two steps: momentum carries the same
        loss_whole = whole.step([(images, targets)], 1e-2)
        loss_parts = parts.step([(images[i : i + 1], targets[i : i + 1]) for i in range(3)], 1e-2)
        torch.testing.assert_close(loss_parts, loss_whole)
    assert (whole.state.iteration, parts.state.iteration) == (2, 2)
    start = tiny_run(Loss(mode)).net.state_dict()
    for name, value in whole.net.state_dict().items():
        torch.testing.assert_close(parts.net.state_dict()[name], value, rtol=1e-4, atol=1e-6)
    assert not torch.equal(whole.net.state_dict()["fc6.weight"], start["fc6.weight"])


def test_validation_loss_is_logged_printed_and_checkpointed(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Score layers start at zero and lr is tiny: every logit is ~0, so the per-pixel mean
    loss is ln(C) on every image."""
    out = tmp_path / "run"
    train(tiny_config(synth, out, lr=1e-12, max_iter=1, val_every=1))
    (val,) = log_records(out, "val")
    assert val["loss"] == pytest.approx(math.log(len(SYNTH_CLASSES)), rel=1e-5)
    ckpt = load_checkpoint(out / LAST)
    assert ckpt.training_state is not None
    assert ckpt.training_state["val_loss"] == pytest.approx(val["loss"])
    said = capsys.readouterr().out
    assert f"iteration 1: loss {val['loss']:.4g}  pixel acc" in said
    assert (
        main(["eval", "--checkpoint", str(out / LAST), "--data", str(synth), "--workers", "0"]) == 0
    )
    printed = capsys.readouterr().out
    assert f"loss {val['loss']:.4g} (mean)  pixel acc" in printed


@pytest.mark.slow
def test_resume_with_every_option_repeats_the_uninterrupted_run(
    synth: Path, tmp_path: Path
) -> None:
    settings = {
        "arch": "fcn16s", "max_iter": 4, "loss_sample": 0.5, "class_weights": "balanced",
        "iter_size": 2, "batch_size": 1, "crop_size": [32, 32], "flip": True, "seed": 4,
        "val_every": 2,
    }  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(tiny_config(synth, whole, **settings))
    train(tiny_config(synth, parts, **{**settings, "max_iter": 2}))
    resume = ["train", "--resume", str(parts / LAST), "--max-iter", "4", "--no-progress"]
    assert main(resume) == 0
    assert len(train_losses(whole)) == 4
    assert train_losses(parts) == train_losses(whole)
    a, b = load_checkpoint(whole / LAST), load_checkpoint(parts / LAST)
    for name, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[name]), name
    assert [r["loss"] for r in log_records(parts, "val")] == [
        r["loss"] for r in log_records(whole, "val")
    ]
    # Sampling did drop cells: the run differs from one over every pixel.
    full = tmp_path / "full"
    train(tiny_config(synth, full, **{**settings, "loss_sample": 1.0}))
    assert train_losses(full) != train_losses(whole)
