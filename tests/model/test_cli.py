"""The ``fcn`` entry point: a user's error is one line and exit status 2, a bug keeps its
traceback, and an output folder that cannot be one is refused before any work."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import model.evaluation.predict
from model.cli import COMMANDS, build_parser, main
from model.evaluation.predictors import PredictError


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_an_out_that_is_a_file_is_refused_first(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every other input is bad too: the --out check comes before any of them is read.
    nowhere, missing = str(tmp_path / "nowhere"), str(tmp_path / "missing.pt")
    args = {
        "train": ["train", "--data", nowhere, "--init", "none"],
        "eval": ["eval", "--checkpoint", missing, "--data", nowhere],
        "predict": ["predict", "--checkpoint", missing, nowhere],
    }[command]
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for out, reason in ((taken, "it is"), (taken / "run", f"{taken} is")):
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"fcn {command}: error: --out {out}: {reason} a file, not a folder\n"
    assert taken.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_named_errors_are_one_line_and_bugs_keep_their_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", "--checkpoint", "c.pt", "photo.jpg", "--out", str(tmp_path / "out")]

    def raising(error: Exception) -> None:
        def predict(*args: object, **kwargs: object) -> list[Path]:
            raise error

        monkeypatch.setattr(model.evaluation.predict, "predict", predict)

    raising(PredictError("photo.jpg: unreadable image"))
    assert main(argv) == 2
    assert capsys.readouterr().err == "fcn predict: error: photo.jpg: unreadable image\n"
    # An OSError about a file names the file, on one line too.
    raising(PermissionError(13, "Permission denied", "out/photo.png"))
    assert main(argv) == 2
    assert capsys.readouterr().err == "fcn predict: error: out/photo.png: Permission denied\n"
    # Anything else is a bug: the traceback is the report.
    raising(ValueError("an internal bug"))
    with pytest.raises(ValueError, match="an internal bug"):
        main(argv)
    raising(OSError("no file involved"))
    with pytest.raises(OSError, match="no file involved"):
        main(argv)


# Run in a fresh interpreter: what `fcn ... --help` imports, and whether it exits cleanly.
HELP_PROBE = """
import sys
from model.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "torchvision", "onnx", "onnxruntime") if m in sys.modules]
print("HEAVY", ",".join(heavy), "CODE", code)
"""


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_loads_no_framework(command: str) -> None:
    """``fcn --help`` and every command's ``--help`` import neither torch nor ONNX: they
    answer at once (bench/bench_cli.py measures how fast)."""
    argv = [command, "--help"] if command else ["--help"]
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.rstrip().endswith("HEAVY  CODE 0"), done.stdout[-300:]
    assert "usage: fcn" in done.stdout


def test_print_config_loads_no_framework() -> None:
    """``fcn train --print-config`` writes a template at once: no torch unless --resume
    names a checkpoint to read."""
    probe = HELP_PROBE.replace("    main(sys.argv[1:])", "    code = main(sys.argv[1:])")
    done = subprocess.run(
        [sys.executable, "-c", probe, "train", "--print-config", "--max-iter", "7"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "max_iter: 7\n" in done.stdout
    assert done.stdout.rstrip().endswith("HEAVY  CODE 0"), done.stdout[-300:]


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"fcn {importlib.metadata.version('fcn-segmentation')}\n"


def test_info_describes_an_onnx_file_and_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.checkpoint import save_checkpoint
    from tests.factory import exported

    checkpoint, onnx_path = exported("fcn8s")
    checkpoint_path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    for path, kind in ((onnx_path, "ONNX schema 1, fp32"), (checkpoint_path, "checkpoint")):
        assert main(["info", str(path)]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"{path}: fcn8s (vgg16, width {checkpoint.spec.width})")
        assert kind in text
        assert f"classes ({len(checkpoint.classes)}): {', '.join(checkpoint.classes)}" in text
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["classes"] == list(checkpoint.classes)
        assert info["arch"] == "fcn8s"
        assert info["preprocessing"] == checkpoint.preprocessing.to_dict()
    assert info["parameters"] == sum(t.numel() for t in checkpoint.state_dict.values())
    # Named errors for what is not a model.
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["info", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not a PyTorch checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 not a graph")
    assert main(["info", str(tmp_path / "junk.onnx")]) == 2
    assert "junk.onnx: not a readable ONNX file" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err


def test_print_config_writes_yaml_that_config_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.commands.train import config_from_args
    from model.training.config import TrainConfig, load_config_file

    flags = ["--arch", "fcn16s", "--max-iter", "7", "--crop-size", "320", "240", "--flip"]
    assert main(["train", "--print-config", *flags]) == 0
    template = capsys.readouterr().out
    assert template.startswith("# fcn train --config FILE reads this back")
    assert "# network (fcn32s, fcn16s, fcn8s, fcn8s-atonce)\narch: fcn16s\n" in template
    path = tmp_path / "train.yaml"
    path.write_text(template)
    config = TrainConfig.from_dict(load_config_file(path), str(path))
    assert (config.arch, config.max_iter, config.crop_size, config.flip) == (
        "fcn16s", 7, [320, 240], True
    )  # fmt: skip
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == template
    args = build_parser(["train"]).parse_args(["train", "--config", str(path)])
    assert config_from_args(args) == config
