"""``fcn eval``: the paper's four metrics of a checkpoint on a data set, its per-class table,
the confusion-matrix PNG and the optional predictions and overlays, with images whole or
cut into tiles as ``fcn predict`` cuts them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from contract.palette import voc_colormap
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.evaluation.evaluate import evaluate
from model.evaluation.predictors import PredictError
from model.export.exporter import export_onnx
from model.nets.fcn import ModelSpec, build_fcn, network_tiling
from model.nets.preprocessing import TORCHVISION
from tests.factory import without_confidence
from tests.model.evaluation.margins import TIE, smallest_margin
from tests.model.evaluation.reference import reference_confusion

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", 1, 3, (40, 56), seed=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained FCN-8s with random scores: predicts several classes, badly."""
    torch.manual_seed(0)
    net = build_fcn(ModelSpec("fcn8s", len(SYNTH_CLASSES), 1 / 32))
    for name in ("score_fr", "score_pool4", "score_pool3"):
        torch.nn.init.normal_(getattr(net, name).weight, std=0.5)
        torch.nn.init.normal_(getattr(net, name).bias, std=2.0)
    ckpt = Checkpoint(
        net.spec,
        net.state_dict(),
        list(SYNTH_CLASSES),
        voc_colormap(len(SYNTH_CLASSES)),
        TORCHVISION,
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "model.pt")


def test_metrics_match_a_hand_computed_confusion(checkpoint: Path, synth: Path) -> None:
    result = evaluate(checkpoint, synth, workers=0)
    expected = reference_confusion(checkpoint, synth)
    assert torch.equal(result.confusion, expected.matrix)
    assert result.metrics.summary() == expected.compute().summary()
    assert result.images == 3
    # The untrained net does predict several classes, so the figures are not degenerate.
    assert int((result.confusion.sum(0) > 0).sum()) >= 2


@pytest.mark.slow
def test_command_prints_table_and_writes_files(
    checkpoint: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(synth), "--out", str(out)]
    assert main([*args, "--predictions", "--overlays", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed
    for name in SYNTH_CLASSES:
        assert any(line.startswith(name) for line in printed.splitlines()), name
    record = json.loads((out / "metrics.json").read_text())
    expected = reference_confusion(checkpoint, synth).compute()
    assert record["mean_iu"] == pytest.approx(expected.mean_iu)
    assert record["classes"] == list(SYNTH_CLASSES)
    assert len(record["confusion"]) == len(SYNTH_CLASSES)
    assert (out / "confusion.png").read_bytes()[:8] == PNG
    # Calibration: printed, in metrics.json, and plotted; at level 0 every pixel is kept.
    assert "calibration (15 bins" in printed
    assert "reliability.png" in printed
    assert (out / "reliability.png").read_bytes()[:8] == PNG
    calibration = record["calibration"]
    assert 0 <= calibration["ece"] <= 1
    assert calibration["pixels"] == sum(map(sum, record["confusion"]))
    everything = calibration["coverage"][0]
    assert (everything["level"], everything["kept"]) == (0.0, 1.0)
    assert everything["mean_iu"] == pytest.approx(record["mean_iu"])
    kept = [row["kept"] for row in calibration["coverage"]]
    assert kept == sorted(kept, reverse=True)
    # One palette PNG and one overlay per image, at the image's size.
    for sample_id in ("val_000000", "val_000001", "val_000002"):
        with Image.open(out / "predictions" / f"{sample_id}.png") as label:
            assert (label.mode, label.size) == ("P", (56, 40))
            assert set(np.unique(np.asarray(label)).tolist()) <= set(range(len(SYNTH_CLASSES)))
        with Image.open(out / "overlays" / f"{sample_id}.jpg") as overlay:
            assert (overlay.mode, overlay.size) == ("RGB", (56, 40))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["--data", "nowhere"], "nowhere: no such data folder"),
        (["--split", "test"], "test.txt: no such split list"),
        (["--predictions"], "--predictions and --overlays need --out DIR"),
        (["--amp", "bf16", "--device", "cpu"], "--amp bf16: needs a CUDA device"),
        (["--device", "gpu"], "--device 'gpu': use auto, cpu, cuda or cuda:N"),
        (["--tile-overlap", "492"], "--tile-overlap needs --tile-size or --max-model-pixels"),
        (["--tile-size", "-1"], "--tile-size must be 0 (no forced tiling) or more, got -1"),
        (["--tile-size", "100"], "--tile-size 100: tiles of 100 pixels cannot overlap by 128"),
    ],
    ids=[
        "checkpoint",
        "data",
        "split",
        "predictions-without-out",
        "amp",
        "device",
        "overlap-without-tiles",
        "negative-tile",
        "tile-under-overlap",
    ],
)
def test_bad_arguments_are_named(
    checkpoint: Path,
    synth: Path,
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = {"--checkpoint": str(checkpoint), "--data": str(synth)}
    for flag in ("--checkpoint", "--data"):
        if flag in flags:
            base.pop(flag)
    args = ["eval", *[x for kv in base.items() for x in kv], *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_class_count_mismatch_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    from model.data.datasets import DataError

    data = tmp_path / "voc"
    write_synthetic(data, 1, 1, (16, 16))
    (data / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    with pytest.raises(DataError, match=f"3 classes, but {checkpoint} predicts 6"):
        evaluate(checkpoint, data, workers=0)


def test_bad_label_is_named_before_evaluating(checkpoint: Path, tmp_path: Path) -> None:
    from model.data.datasets import DataError

    data = tmp_path / "voc"
    write_synthetic(data, 1, 1, (16, 16))
    label = data / "SegmentationClass" / "val_000000.png"
    Image.fromarray(np.full((16, 16), 9, dtype=np.uint8), mode="L").save(label)
    with pytest.raises(DataError, match=f"{label}: label values \\[9\\] outside \\[0, 6\\)"):
        evaluate(checkpoint, data, workers=0)


@pytest.mark.slow
def test_tiles_at_the_exact_overlap_give_the_untiled_metrics(
    checkpoint: Path, tmp_path: Path
) -> None:
    # Wider than the smallest tile at the exact overlap (556), and past 600,000 padded pixels.
    data = write_synthetic(tmp_path / "thin", 1, 1, (45, 2301), seed=5)
    image, _ = voc_dataset(data, "val")[0]
    # No label is within float noise of a tie, so a tile's labels can equal the whole's.
    assert smallest_margin(load_checkpoint(checkpoint), image.permute(1, 2, 0).numpy()) > TIE
    base = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0"]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    # Whole images have logits to score; tiles give labels only, hence no loss.
    assert whole.pop("loss") > 0
    exact = str(network_tiling("fcn8s").exact_overlap)
    # Forced tiles of 1024 (1 x 4), and a pass of at most 600,000 pixels (1 x 2).
    for flags in (["--tile-size", "1024"], ["--max-model-pixels", "600000"]):
        out = tmp_path / flags[0]
        assert main([*base, "--out", str(out), *flags, "--tile-overlap", exact]) == 0
        tiled = json.loads((out / "metrics.json").read_text())
        assert tiled.pop("loss") is None
        assert tiled == whole, flags
    # The service's default overlap changes labels near the seams: tiles were really cut.
    cheaper = evaluate(checkpoint, data, workers=0, check_data=False, tile_size=1024)
    assert cheaper.confusion.tolist() != whole["confusion"]


@pytest.mark.slow
def test_an_onnx_model_is_evaluated_on_onnx_runtime_as_the_service_runs_it(
    checkpoint: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = export_onnx(load_checkpoint(checkpoint), tmp_path / "model.onnx")
    expected = reference_confusion(checkpoint, synth)
    out = tmp_path / "eval"
    base = ["eval", "--data", str(synth), "--workers", "0", "--out", str(out)]
    base += ["--runtime", "onnxruntime", "--precision", "fp32"]  # auto may take bf16
    assert main([*base, "--checkpoint", str(onnx_path), "--predictions"]) == 0
    assert str(onnx_path) in capsys.readouterr().out
    record = json.loads((out / "metrics.json").read_text())
    # ONNX Runtime and PyTorch may round a near-tie differently, nowhere else.
    differ = np.abs(np.array(record["confusion"]) - expected.matrix.numpy()).sum()
    assert differ <= 0.001 * expected.matrix.sum().item()
    assert record["mean_iu"] == pytest.approx(expected.compute().mean_iu, abs=0.01)
    # Its predictions are the service's labels: palette PNGs of the model's colours.
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for i, (image, _) in enumerate(voc_dataset(synth, "val")):
        sample = voc_dataset(synth, "val").samples[i]
        (labels,) = session.run(["labels"], {"image": image.permute(1, 2, 0).numpy()[None]})
        written = np.array(Image.open(out / "predictions" / f"{sample.id}.png"))
        assert np.array_equal(written, labels[0])
    with pytest.raises(PredictError, match="--amp bf16: an ONNX model runs at its exported"):
        evaluate(onnx_path, synth, workers=0, amp="bf16")
    # The file's own confidence gives the checkpoint's calibration, to rounding.
    by_torch = evaluate(checkpoint, synth, workers=0, check_data=False).calibration
    assert by_torch is not None
    assert record["calibration"]["ece"] == pytest.approx(by_torch.ece, abs=0.005)
    bare = without_confidence(onnx_path, tmp_path / "bare.onnx")
    bare_out = tmp_path / "bare-eval"
    flags = ["--data", str(synth), "--workers", "0", "--out", str(bare_out)]
    assert main(["eval", *flags, "--checkpoint", str(bare)]) == 0
    assert "calibration: not measured;" in capsys.readouterr().out
    assert "calibration" not in json.loads((bare_out / "metrics.json").read_text())
    assert not (bare_out / "reliability.png").exists()
