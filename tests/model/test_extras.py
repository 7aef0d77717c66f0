"""Every ``fcn`` command on a machine without the extra it needs (``make serve`` installs the
service alone): one line naming the extra and its install command, exit status 2, no
traceback. Each runs in a fresh interpreter where the extra's packages cannot be imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.cli import COMMANDS
from tests.isolation import run_without

TRAIN = {"torch", "torchvision", "onnx"}
DEMO = "models/demo/fcn8s.onnx"
SAMPLES = "models/demo/samples"
# command -> (what cannot be imported, its arguments, the extra named); loopback URLs only
CASES = {
    "convert-caffe": (TRAIN, ["x.caffemodel", "--out", "{tmp}/x.pt"], "train"),
    "export": (TRAIN, ["--checkpoint", "x.pt", "--out", "{tmp}/x.onnx"], "train"),
    "verify-onnx": (TRAIN, [DEMO, "--checkpoint", "x.pt"], "train"),
    "data": (TRAIN, ["synth", "--out", "{tmp}/synth"], "train"),
    "train": (TRAIN, ["--data", "{tmp}", "--out", "{tmp}/run"], "train"),
    "eval": (TRAIN, ["--checkpoint", DEMO, "--data", "{tmp}"], "train"),
    "predict": (TRAIN, ["--checkpoint", DEMO, "--out", "{tmp}/out", SAMPLES], "train"),
    "segment": (
        {"httpx"},
        ["--url", "http://127.0.0.1:9", "--out", "{tmp}/out", SAMPLES],
        "client",
    ),
    "info": (TRAIN, [DEMO], "train"),
    "pretrained": (
        TRAIN,
        ["voc-fcn8s", "--out", "{tmp}/m", "--cache", "{tmp}/c", "--mirror", "http://127.0.0.1:9/"],
        "train",
    ),
}


def test_every_command_has_a_case() -> None:
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_missing_extra_is_one_line_naming_it_and_exit_2(command: str, tmp_path: Path) -> None:
    blocked, args, extra = CASES[command]
    argv = [command, *(a.format(tmp=tmp_path) for a in args)]
    code = f"import sys\nfrom model.cli import main\nsys.exit(main({argv!r}))\n"
    result = run_without(blocked, code)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"fcn {command}: error: "), lines[0]
    assert f"pip install 'fcn-segmentation[{extra}]'" in lines[0]
