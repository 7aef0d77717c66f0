"""``fcn export``: a verified file or none at all, and bad input named on the command line."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest

from model.checkpoint import save_checkpoint
from model.cli import main
from tests.factory import tiny_checkpoint


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    return save_checkpoint(tiny_checkpoint("fcn32s"), tmp_path / "ckpt.pt")


NOTE = "synthetic shapes only; for photos serve voc-fcn8s"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_export_verifies_reports_and_writes_the_triton_repository(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    repo = tmp_path / "triton"
    code = main(
        [
            "export",
            "--checkpoint", str(checkpoint_file),
            "--out", str(out),
            "--triton-repo", str(repo),
            "--triton-name", "segmenter",
            "--max-batch-size", "4",
            "--note", NOTE,
        ]
    )  # fmt: skip
    assert code == 0
    report = capsys.readouterr().out
    assert "batch 1 x 1x1: labels agree 100.0000%" in report
    assert "PASSED" in report
    assert "confidence: within" in report  # checked against PyTorch's softmax
    assert f"wrote {out} (" in report
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["fcn.arch"] == "fcn32s"
    assert [o.name for o in session.get_outputs()] == ["labels", "confidence"]  # by default
    # The exporter's caveat travels in the file, and `fcn info` shows it.
    assert session.get_modelmeta().custom_metadata_map["fcn.note"] == NOTE
    assert main(["info", str(out)]) == 0
    assert f"\nnote: {NOTE}\n" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] == NOTE
    assert (repo / "segmenter" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert 'name: "confidence"' in (repo / "segmenter" / "config.pbtxt").read_text()
    assert 'name: "segmenter"' in (repo / "segmenter" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in (repo / "segmenter" / "config.pbtxt").read_text()
    assert not [p for p in files_under(tmp_path) if p.endswith(".tmp")]


@pytest.mark.slow
def test_no_confidence_leaves_the_output_out(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "labels-only.onnx"
    assert main(["export", "--checkpoint", str(checkpoint_file), "--out", str(out),
                 "--no-confidence"]) == 0  # fmt: skip
    assert "confidence: no such output" in capsys.readouterr().out
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels"]


@pytest.mark.slow
def test_a_failed_verification_leaves_the_old_file_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fc7 weights beyond float16's range: fine in fp32, inf once halved.
    checkpoint = tiny_checkpoint("fcn32s")
    checkpoint.state_dict["fc7.weight"] = checkpoint.state_dict["fc7.weight"] * 1e5
    ckpt = save_checkpoint(checkpoint, tmp_path / "ckpt.pt")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous model")
    before = files_under(tmp_path)

    code = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--fp16"])
    assert code == 1
    report = capsys.readouterr().out
    assert "FAILED" in report
    assert "float16" in report
    assert f"{out} not written" in report
    assert out.read_bytes() == b"the previous model"
    assert files_under(tmp_path) == before


def _missing(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    return ["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")], (
        "--checkpoint " + str(tmp_path / "nope.pt") + ": no such checkpoint file"
    )


def _corrupt(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:3000])
    return ["--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")], (
        f"--checkpoint {bad}: unreadable or truncated checkpoint"
    )


def _misfit(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    # FCN-16s weights recorded as an FCN-32s.
    checkpoint = tiny_checkpoint("fcn16s")
    checkpoint.spec = replace(checkpoint.spec, arch="fcn32s")
    bad = save_checkpoint(checkpoint, tmp_path / "misfit.pt")
    return ["--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")], (
        f"--checkpoint {bad}: weights do not fit fcn32s: missing upscore.weight; "
        "unexpected score_pool4.weight, score_pool4.bias, upscore2.weight, upscore16.weight\n"
    )


def _no_folder(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    out = tmp_path / "missing" / "m.onnx"
    return ["--checkpoint", str(ckpt), "--out", str(out)], (
        f"--out {out}: folder {tmp_path / 'missing'} does not exist"
    )


def _file_as_folder(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    out = ckpt / "m.onnx"
    return ["--checkpoint", str(ckpt), "--out", str(out)], f"--out {out}: {ckpt} is not a folder"


def _folder_as_out(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    return ["--checkpoint", str(ckpt), "--out", str(tmp_path)], f"--out {tmp_path}: is a folder"


def _read_only(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    if os.geteuid() == 0:
        # Root writes through mode bits; sysfs refuses new files even to root.
        folder = Path("/sys")
    else:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
    out = folder / "m.onnx"
    return ["--checkpoint", str(ckpt), "--out", str(out)], f"--out {out}: cannot write in {folder}"


def _old_opset(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--opset", "11"], "--opset 11: use 18 to"


def _triton_flag_alone(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--max-batch-size", "4"], "--max-batch-size: only with --triton-repo"


def _triton_repo_is_file(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--triton-repo", str(ckpt)], f"--triton-repo {ckpt}: it is a file, not a folder"


def _triton_repo_unwritable(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    # Refused before the export, so that neither --out nor the repository is written.
    if os.geteuid() == 0:
        folder = Path("/proc")  # refuses new folders even to root
    else:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    repo = folder / "repo"
    return [*args, "--triton-repo", str(repo)], f"--triton-repo {repo}: cannot write in {folder}"


def _bad_triton_name(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--triton-repo", str(tmp_path), "--triton-name", "../up"], "--triton-name"


def _bad_stitch_factor(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--shift-and-stitch", "3"], "--shift-and-stitch 3: "


def _two_line_note(tmp_path: Path, ckpt: Path) -> tuple[list[str], str]:
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]
    return [*args, "--note", "synthetic\nonly"], "--note must be one line"


@pytest.mark.parametrize(
    "case",
    [
        _missing,
        _corrupt,
        _misfit,
        _no_folder,
        _file_as_folder,
        _folder_as_out,
        pytest.param(
            _read_only,
            marks=pytest.mark.skipif(
                os.geteuid() == 0 and not Path("/sys/kernel").is_dir(), reason="no sysfs"
            ),
        ),
        _old_opset,
        _triton_flag_alone,
        _triton_repo_is_file,
        _triton_repo_unwritable,
        _bad_triton_name,
        _bad_stitch_factor,
        _two_line_note,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_bad_input_is_named_and_leaves_no_file(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture[str], case: object
) -> None:
    assert callable(case)
    args, message = case(tmp_path, checkpoint_file)
    before = files_under(tmp_path)
    assert main(["export", *args]) == 2
    assert message in capsys.readouterr().err
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_shift_and_stitch_exports_the_dense_net_verified_against_it(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import torch

    from model.checkpoint import load_checkpoint
    from model.export.graph import SegmentationGraph
    from model.nets.shift_stitch import shift_and_stitch

    out = tmp_path / "dense.onnx"
    assert main(["export", "--checkpoint", str(checkpoint_file), "--out", str(out),
                 "--shift-and-stitch", "4"]) == 0  # fmt: skip
    report = capsys.readouterr().out
    assert "PASSED" in report
    # The file's labels are the stitched net's, at the input's size.
    checkpoint = load_checkpoint(checkpoint_file)
    stitched = shift_and_stitch(checkpoint.build_model(), 4).eval()
    graph = SegmentationGraph(stitched, checkpoint.preprocessing, num_classes=5).eval()
    image = np.random.default_rng(0).integers(0, 256, (1, 41, 67, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = graph(torch.from_numpy(image))[0].numpy()
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    (labels,) = session.run(["labels"], {"image": image})
    assert labels.shape == (1, 41, 67)
    assert (labels == expected).mean() > 0.999


def test_shift_and_stitch_of_a_net_with_skips_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_checkpoint(tiny_checkpoint("fcn16s"), tmp_path / "ckpt.pt")
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--shift-and-stitch", "2"]
    assert main(args) == 2
    assert "--shift-and-stitch 2: shift-and-stitch needs an FCN-32s" in capsys.readouterr().err
    assert not out.exists()
