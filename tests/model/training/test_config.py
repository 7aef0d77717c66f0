"""The typed training config: the reference solver's defaults, the learning rate by stage,
loss and optimizer, config files whose bad values, keys and types are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.training.config import ConfigError, TrainConfig, load_config_file


def test_defaults_are_the_reference_solver() -> None:
    config = TrainConfig()
    assert (config.arch, config.loss, config.lr_policy) == ("fcn32s", "sum", "fixed")
    assert (config.momentum, config.weight_decay, config.bias_lr_mult) == (0.99, 5e-4, 2.0)
    assert (config.batch_size, config.crop_size, config.flip) == (1, None, False)
    assert config.init == "imagenet"
    # The staged reference rates: each stage 100x lower; the mean loss has its own.
    assert [TrainConfig(arch=a).learning_rate for a in ("fcn32s", "fcn16s", "fcn8s")] == [
        1e-10,
        1e-12,
        1e-14,
    ]
    assert TrainConfig(arch="fcn8s-atonce").learning_rate == 1e-10
    assert TrainConfig(arch="fcn8s", loss="mean").learning_rate == 1e-4
    assert TrainConfig(arch="fcn8s", lr=3e-3).learning_rate == 3e-3


def test_a_file_applies_over_the_defaults_and_round_trips(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("arch: fcn16s\nlr: 0.01\nmax-iter: 50\ncrop_size: [64, 96]\n")
    config = TrainConfig().updated(load_config_file(config_file), str(config_file))
    assert (config.arch, config.lr, config.max_iter, config.crop) == ("fcn16s", 0.01, 50, (64, 96))
    assert config.momentum == 0.99  # untouched default
    assert TrainConfig.from_dict(config.to_dict()) == config  # what checkpoints store
    assert TrainConfig(crop_size=[80]).crop == (80, 80)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_iter: 0\n", "run.yaml: max-iter: must be at least 1, got 0"),
        ("lerning_rate: 0.1\n", "run.yaml: unknown setting 'lerning_rate'"),
        ("momentum: fast\n", "run.yaml: momentum: expected a number, got 'fast'"),
        ("flip: 1\n", "run.yaml: flip: expected true or false"),
        ("- a list\n", "run.yaml: expected a mapping of settings"),
    ],
    ids=["bad-value", "unknown-key", "wrong-type", "int-for-bool", "not-a-mapping"],
)
def test_bad_config_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        TrainConfig().updated(load_config_file(config_file), str(config_file))
