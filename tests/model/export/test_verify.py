"""Verification passes faithful exports, fails unfaithful ones with reasons, and says so on
the command line through its exit status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from contract.runtimes import native_bf16, openvino_installed
from model.checkpoint import save_checkpoint
from model.cli import main
from model.export.verify import verify_onnx
from tests.factory import exported, tiny_checkpoint


def test_a_faithful_export_passes_on_the_contract_sizes() -> None:
    checkpoint, path = exported("fcn8s")
    report = verify_onnx(path, checkpoint)
    assert report.passed, report
    shapes = [case.shape for case in report.cases]
    assert (1, 1, 1) in shapes
    assert any(n == 1 and h != w and h % 2 == 1 and w % 2 == 1 for n, h, w in shapes)
    assert any(n == 2 for n, _, _ in shapes)
    assert (report.precision, report.min_agreement, report.logit_tolerance) == (
        "fp32",
        0.9999,
        1e-4,
    )
    assert report.agreement >= 0.9999
    assert report.max_logit_error <= 1e-4
    # Without a scores output the logits are the very tensor the graph's ArgMax reads.
    assert report.logits_from == "ArgMax input"
    assert report.max_confidence_error is not None
    assert report.max_confidence_error <= report.confidence_tolerance == 1
    assert "confidence: within" in str(report)
    assert str(report).endswith("PASSED")


def test_a_confidence_that_is_not_the_softmax_fails(tmp_path: Path) -> None:
    checkpoint, path = exported("fcn8s")
    model = onnx.load(path)
    producers = {out: node for node in model.graph.node for out in node.output}
    scale = producers[producers[producers["confidence"].input[0]].input[0]]  # Cast <- Round <- Mul
    assert scale.op_type == "Mul"
    weights = {init.name: init for init in model.graph.initializer}
    (factor,) = [weights[name] for name in scale.input if name in weights]
    factor.CopyFrom(onnx.numpy_helper.from_array(np.array(200, np.float32), factor.name))
    off = tmp_path / "off.onnx"
    onnx.save_model(model, off)
    report = verify_onnx(off, checkpoint, cases=[(1, 9, 11)])
    assert not report.passed
    assert report.agreement == 1.0  # the labels are untouched
    assert any(f.startswith("confidence off by") for f in report.failures), report.failures


def test_an_export_without_confidence_passes_and_says_so() -> None:
    checkpoint, path = exported("fcn8s", confidence=False)
    report = verify_onnx(path, checkpoint, cases=[(1, 5, 7)])
    assert report.passed, report
    assert report.max_confidence_error is None
    assert "confidence: no such output" in str(report)


@pytest.mark.slow
def test_the_scores_output_is_compared_when_present() -> None:
    checkpoint, path = exported("fcn8s", with_scores=True)
    report = verify_onnx(path, checkpoint, cases=[(1, 1, 1), (2, 9, 301)])
    assert report.passed, report
    assert report.logits_from == "scores output"
    assert [c.shape for c in report.cases] == [(1, 1, 1), (2, 9, 301)]


@pytest.mark.slow
def test_fp16_is_held_to_its_own_threshold_and_detected_without_metadata(tmp_path: Path) -> None:
    checkpoint, path = exported("fcn8s", fp16=True)
    report = verify_onnx(path, checkpoint)
    assert report.passed, report
    assert (report.precision, report.min_agreement, report.logit_tolerance) == ("fp16", 0.995, None)

    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != "fcn.precision"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save_model(model, bare)
    assert verify_onnx(bare, checkpoint, cases=[(1, 5, 7)]).precision == "fp16"


def test_the_wrong_checkpoint_fails_with_reasons() -> None:
    _, path = exported("fcn8s")
    report = verify_onnx(path, tiny_checkpoint("fcn16s"))
    assert not report.passed
    assert any("fcn.arch is 'fcn8s'" in f for f in report.failures)
    assert any("labels agree" in f for f in report.failures)
    assert "FAILED" in str(report)


def test_a_model_without_fcn_metadata_fails(tmp_path: Path) -> None:
    checkpoint, path = exported("fcn8s")
    model = onnx.load(path)
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(model, foreign)
    report = verify_onnx(foreign, checkpoint, cases=[(1, 3, 3)])
    assert not report.passed
    assert any("not an FCN model" in f for f in report.failures)


def test_verify_onnx_command_exit_status_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, path = exported("fcn8s")
    good = save_checkpoint(checkpoint, tmp_path / "good.pt")
    other = save_checkpoint(tiny_checkpoint("fcn8s-atonce"), tmp_path / "other.pt")

    assert main(["verify-onnx", str(path), "--checkpoint", str(good), "--case", "2x7x300"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 x 7x300" in out
    assert out.rstrip().endswith("PASSED")

    assert main(["verify-onnx", str(path), "--checkpoint", str(other)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed")
def test_verify_onnx_checks_the_file_on_openvino_at_each_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, path = exported("fcn8s")
    good = save_checkpoint(checkpoint, tmp_path / "good.pt")
    base = ["verify-onnx", str(path), "--checkpoint", str(good), "--case", "1x37x53"]
    assert main([*base, "--runtime", "openvino", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "on openvino fp32" in out
    assert "need <= 1e-04" in out  # fp32 is held to fp32's logit bound
    if native_bf16():
        main([*base, "--runtime", "openvino", "--precision", "bf16"])
        out = capsys.readouterr().out
        assert "on openvino bf16" in out
        assert "(reported only)" in out  # bf16 rounds every product: no logit bound
    assert main([*base, "--precision", "bf16"]) == 2  # on ONNX Runtime, the default
    assert "--precision bf16: bf16 runs on OpenVINO only" in capsys.readouterr().err


def test_verify_onnx_names_a_missing_model_or_a_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, path = exported("fcn8s")
    good = save_checkpoint(checkpoint, tmp_path / "good.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:4000])

    assert main(["verify-onnx", str(tmp_path / "nope.onnx"), "--checkpoint", str(good)]) == 2
    assert "nope.onnx: no such model file" in capsys.readouterr().err
    assert main(["verify-onnx", str(path), "--checkpoint", str(broken)]) == 2
    assert "--checkpoint" in (err := capsys.readouterr().err)
    assert "broken.pt" in err
