"""``export_checkpoint``: each file yielded as it is written, in order, and a refused
argument named for the caller (``fcn export`` turns the name into its flag)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.checkpoint import save_checkpoint
from model.export.exporter import ExportResult
from model.export.pipeline import ArgumentError, Int8Options, TritonOptions, export_checkpoint
from model.export.triton import TritonError
from tests.factory import tiny_checkpoint


@pytest.mark.slow
def test_the_fp32_file_then_the_triton_model_are_yielded_as_written(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tiny_checkpoint("fcn32s"), tmp_path / "ckpt.pt")
    out = tmp_path / "model.onnx"
    steps = export_checkpoint(
        ckpt, out, verify=False, triton=TritonOptions(tmp_path / "repo", name="seg")
    )
    fp32 = next(steps)
    assert isinstance(fp32, ExportResult)
    assert fp32.path == out
    assert fp32.report is None
    assert out.stat().st_size == fp32.size_bytes
    assert not (tmp_path / "repo").exists()  # not before it is asked for
    assert list(steps) == [tmp_path / "repo" / "seg"]
    assert (tmp_path / "repo" / "seg" / "1" / "model.onnx").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("int8", "argument", "words"),
    [
        (None, "checkpoint", "no such checkpoint file"),
        # The images are read first: a missing checkpoint is not reached.
        (Int8Options(Path("no-photos")), "calibration", "no such folder of images"),
    ],
    ids=["checkpoint", "calibration"],
)
def test_a_refused_argument_is_named_before_any_work(
    tmp_path: Path, int8: Int8Options | None, argument: str, words: str
) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(ArgumentError, match=words) as caught:
        next(export_checkpoint(tmp_path / "missing.pt", out, int8=int8))
    assert caught.value.argument == argument
    assert not out.exists()


@pytest.mark.slow
def test_a_triton_error_names_the_triton_argument_after_the_fp32_file(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tiny_checkpoint("fcn32s"), tmp_path / "ckpt.pt")
    triton = TritonOptions(tmp_path / "repo", name="a/b")
    steps = export_checkpoint(ckpt, tmp_path / "m.onnx", verify=False, triton=triton)
    assert isinstance(next(steps), ExportResult)
    with pytest.raises(ArgumentError) as caught:
        next(steps)
    assert caught.value.argument == "triton"
    assert isinstance(caught.value.__cause__, TritonError)
