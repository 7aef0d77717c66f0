"""The ``fcn`` entry point: a user's error is one line and exit status 2, a bug keeps its
traceback, and an output folder that cannot be one is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

import model.commands.predict
from model.cli import main
from model.evaluation.predict import PredictError


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

        monkeypatch.setattr(model.commands.predict, "predict", predict)

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
