"""``fcn train``: a flag for every config field, flags over the file over the defaults, and
a bad flag, file or value refused with a one-line message naming it, before any step."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model.cli import main
from model.commands.train import (
    add_arguments,
    add_config_arguments,
    config_from_args,
    flag_overrides,
)
from model.training.config import TrainConfig


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_over_file_over_defaults(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "arch: fcn16s\nlr: 0.01\nmax-iter: 50\ncrop_size: [64, 96]\nflip: true\n"
    )
    config = config_from_args(parse(["--config", str(config_file), "--max-iter", "7", "--no-flip"]))
    assert (config.arch, config.lr, config.max_iter, config.flip) == ("fcn16s", 0.01, 7, False)
    assert config.crop == (64, 96)
    assert config.momentum == 0.99  # untouched default
    # Only the flags given override: the others stay out of the namespace.
    assert flag_overrides(parse(["--width", "0.25"])) == {"width": 0.25}


def test_every_field_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert {f for f in TrainConfig.__dataclass_fields__} <= flags


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-iter", "0"], "--max-iter: must be at least 1, got 0"),
        (["--momentum", "1.5"], "--momentum: must be in [0, 1), got 1.5"),
        (["--crop-size", "1", "2", "3"], "--crop-size: needs H or H W"),
        (["--amp", "fp16", "--device", "cpu", "--data", "x"], "--amp fp16: needs a CUDA device"),
        (["--config", "missing.yaml"], "missing.yaml: no such config file"),
        (["--init", "imagenet21k", "--data", "DATA"], "unknown init 'imagenet21k'"),
        (["--data", "nowhere"], "nowhere: no such data folder"),
    ],
    ids=["max-iter", "momentum", "crop", "amp-on-cpu", "config-file", "init", "data"],
)
def test_train_command_names_the_bad_flag(
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    synth_voc: Path,
) -> None:
    flags = [str(synth_voc) if f == "DATA" else f for f in flags]
    assert main(["train", "--out", str(tmp_path / "run"), "--workers", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcn train: error: ")
    assert message in err
    assert not (tmp_path / "run" / "last.pt").exists()
