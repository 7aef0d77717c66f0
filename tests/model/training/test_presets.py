"""``fcn train --preset``: the reference's solver per data set and net, applied under the
config file and flags; a short run from each preset on each synthetic layout, then eval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.cli import main
from model.data.synthetic import write_synthetic
from model.training.config import preset_config
from model.training.runlog import BEST


@pytest.mark.parametrize(
    ("name", "lr", "iterations", "every", "splits"),
    [
        # solver.prototxt's base_lr; solve.py's rounds x steps, scored after each round.
        ("voc-fcn32s", 1e-10, 100_000, 4000, ("train", "seg11valid")),
        ("voc-fcn8s-atonce", 1e-10, 300_000, 4000, ("train", "seg11valid")),
        ("context-fcn32s", 1e-10, 400_000, 8000, ("train", "val")),
        ("context-fcn16s", 1e-12, 400_000, 8000, ("train", "val")),
        ("context-fcn8s", 1e-14, 400_000, 8000, ("train", "val")),
        ("siftflow-fcn32s", 1e-10, 100_000, 2000, ("trainval", "test")),
        ("siftflow-fcn16s", 1e-12, 100_000, 2000, ("trainval", "test")),
        ("siftflow-fcn8s", 1e-12, 100_000, 2000, ("trainval", "test")),
        ("nyud-fcn32s-color", 1e-10, 100_000, 2000, ("trainval", "test")),
    ],
)
def test_presets_are_the_reference_solvers(
    name: str, lr: float, iterations: int, every: int, splits: tuple[str, str]
) -> None:
    config = preset_config(name)
    assert (config.lr, config.max_iter, config.val_every) == (lr, iterations, every)
    assert (config.train_split, config.val_split) == splits
    assert config.arch == name.split("-", 1)[1].removesuffix("-color")
    # Every reference solver: SGD, momentum 0.99, weight decay 5e-4, the summed loss,
    # one image a step, biases at twice the rate.
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.99, 5e-4)
    assert (config.loss, config.batch_size, config.iter_size) == ("sum", 1, 1)
    assert (config.lr_policy, config.bias_lr_mult) == ("fixed", 2.0)
    layout = name.split("-", maxsplit=1)[0]
    assert config.data_format == ("auto" if layout == "voc" else layout)
    assert config.geometry == (layout == "siftflow")  # net.py's second head, loss_geo


def test_flags_and_config_file_override_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "run.json"
    settings.write_text(json.dumps({"max_iter": 50, "lr": 1e-9}))
    argv = ["train", "--preset", "nyud-fcn32s-color", "--config", str(settings)]
    assert main([*argv, "--lr", "3e-9", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^max_iter: 50$", printed, re.M)  # the file over the preset
    assert re.search(r"^lr: 3\.0e-09$", printed, re.M)  # the flag over the file
    assert re.search(r"^data_format: nyud$", printed, re.M)  # the preset over the defaults
    assert re.search(r"^val_split: test$", printed, re.M)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "context-fcn8s"], "continues a trained context-fcn16s"),
        (["--preset", "voc-fcn16s", "--init", "imagenet"], "give --init checkpoint:PATH"),
        (["--preset", "nyud-fcn32s-color", "--resume", "x.pt"], "--preset: not with --resume"),
    ],
    ids=["staged", "staged-imagenet", "resume"],
)
def test_bad_preset_use_is_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *argv, "--print-config"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "nyud-fcn32s", "--print-config"])
    assert "invalid choice: 'nyud-fcn32s'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["context-fcn32s", "siftflow-fcn32s", "nyud-fcn32s-color"])
def test_a_short_run_from_each_preset_trains_and_evaluates(
    tmp_path: Path, preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = preset.split("-", maxsplit=1)[0]
    data = write_synthetic(tmp_path / layout, 2, 1, (32, 40), seed=2, layout=layout)
    out = tmp_path / "run"
    # The preset's data layout and splits; a tiny random net, a rate that moves it at once,
    # FCN-8s for its small upsampling kernels (FCN-32s's are 64x64 for each pair of classes).
    tiny = ["--arch", "fcn8s", "--width", "0.03125", "--init", "none"]
    tiny += ["--loss", "mean", "--lr", "1e-3"]
    steps = ["--max-iter", "2", "--val-every", "2", "--workers", "0", "--no-progress"]
    argv = ["train", "--preset", preset, "--data", str(data), "--out", str(out)]
    assert main([*argv, *tiny, *steps]) == 0
    checkpoint = load_checkpoint(out / BEST)
    config = preset_config(preset)
    assert checkpoint.dataset.startswith(f"{layout}:{data} ({config.train_split}, 2 images)")
    assert checkpoint.spec.num_classes == {"context": 60, "siftflow": 33, "nyud": 40}[layout]
    assert set(checkpoint.metrics) >= {"pixel_accuracy", "mean_iu"}
    # SIFT Flow's nets train their geometric head too, and score it as solve.py does.
    two_heads = layout == "siftflow"
    assert checkpoint.spec.geometry_classes == (3 if two_heads else 0)
    assert ("geometric_accuracy" in checkpoint.metrics) == two_heads
    if two_heads:  # its score layers start at zero: only its own loss moves them
        assert checkpoint.state_dict["score_pool3_geo.weight"].abs().sum() > 0
    capsys.readouterr()

    argv = ["eval", "--checkpoint", str(out / BEST), "--data", str(data)]
    assert main([*argv, "--split", config.val_split, "--workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"({config.val_split}, 1 images)" in printed
    assert re.search(r"pixel acc [\d.]+  mean acc [\d.]+  mean IU [\d.]+  f.w. IU [\d.]+", printed)
    assert bool(re.search(r"f.w. IU [\d.]+  geom. acc [\d.]+\n", printed)) == two_heads


def test_the_geometric_head_needs_sift_flows_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic(tmp_path / "nyud", 1, 1, (16, 16), seed=2, layout="nyud")
    argv = ["train", "--preset", "nyud-fcn32s-color", "--data", str(data), "--geometry"]
    argv += ["--width", "0.03125", "--init", "none", "--no-check-data", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "geometry: nyud:" in err
    assert "has no geometric labels; only SIFT Flow has" in err
