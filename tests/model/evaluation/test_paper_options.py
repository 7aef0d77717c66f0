"""``fcn eval --upper-bound`` (the paper's Appendix A), and ``--shift-and-stitch F`` in
``fcn eval`` and ``fcn predict``: the stitched net's labels, refused on ONNX files and on
nets it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.palette import voc_colormap
from model.checkpoint import Checkpoint, save_checkpoint
from model.cli import main
from model.data.layouts import voc_dataset
from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.evaluation.evaluate import evaluate
from model.evaluation.upper_bound import block_labels, upper_bounds
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import TORCHVISION, Normalize
from model.nets.shift_stitch import shift_and_stitch
from tests.model.evaluation.reference import reference_confusion


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", 1, 2, (24, 40), seed=3)


def random_checkpoint(folder: Path, arch: str) -> Path:
    torch.manual_seed(0)
    net = build_fcn(ModelSpec(arch, len(SYNTH_CLASSES), 1 / 32))
    torch.nn.init.normal_(net.score_fr.weight, std=0.5)
    torch.nn.init.normal_(net.score_fr.bias, std=2.0)
    ckpt = Checkpoint(net.spec, net.state_dict(), list(SYNTH_CLASSES), voc_colormap(6), TORCHVISION)
    return save_checkpoint(ckpt, folder / f"{arch}.pt")


@pytest.fixture(scope="module")
def fcn32s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt"), "fcn32s")


def test_block_labels_take_each_blocks_majority_and_upsample_nearest() -> None:
    target = torch.tensor(
        [
            [1, 1, 2, 255, 0],
            [1, 2, 2, 255, 0],
            [255, 255, 3, 3, 0],
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 2, 2, 0],
            [1, 1, 2, 2, 0],
            [255, 255, 3, 3, 0],
        ]
    )
    assert torch.equal(block_labels(target, 2, 4), expected)
    assert torch.equal(block_labels(target, 1, 4), target)


def test_upper_bound_falls_with_the_factor_and_is_printed_beside_the_paper(
    synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = voc_dataset(synth, "val")
    bounds = upper_bounds(dataset, (32, 8, 1))
    assert bounds[1] == 1.0
    assert bounds[32] < bounds[8] < 1.0
    assert main(["eval", "--upper-bound", "--data", str(synth)]) == 0
    printed = capsys.readouterr().out
    assert "Appendix A" in printed
    assert any(line.split()[:1] == ["32"] and "86.1%" in line for line in printed.splitlines())
    assert main(["eval", "--upper-bound", "--json", "--data", str(synth)]) == 0
    record = json.loads(capsys.readouterr().out)
    rows = {row["factor"]: row for row in record["upper_bound"]}
    assert sorted(rows) == [4, 8, 16, 32, 64, 128]
    assert rows[32]["paper_mean_iu"] == pytest.approx(0.861)
    assert rows[8]["mean_iu"] == pytest.approx(bounds[8])


def test_eval_and_predict_run_the_stitched_net(
    fcn32s: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = evaluate(fcn32s, synth, workers=0, shift_and_stitch=4)
    expected = reference_confusion(fcn32s, synth, 4)
    assert torch.equal(result.confusion, expected.matrix)
    # Other logits than the plain net's: the loss says so even where the argmax agrees.
    plain = evaluate(fcn32s, synth, workers=0)
    assert result.loss is not None
    assert plain.loss is not None
    assert result.loss != pytest.approx(plain.loss)
    args = ["eval", "--checkpoint", str(fcn32s), "--data", str(synth), "--workers", "0"]
    assert main([*args, "--shift-and-stitch", "4"]) == 0
    assert "shift-and-stitch 4 on" in capsys.readouterr().out

    image = voc_dataset(synth, "val").samples[0].image
    out = tmp_path / "predicted"
    predict = ["predict", str(image), "--checkpoint", str(fcn32s), "--out", str(out)]
    assert main([*predict, "--shift-and-stitch", "4", "--device", "cpu"]) == 0
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(fcn32s)
    net = shift_and_stitch(ckpt.build_model().eval(), 4)
    rgb = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    with torch.no_grad():
        labels = net(Normalize(ckpt.preprocessing)(rgb[None])).argmax(1)[0].numpy()
    with Image.open(out / f"{image.stem}.png") as written:
        assert np.array_equal(np.asarray(written), labels)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("eval-onnx", "model.onnx is an exported graph"),
        ("predict-onnx", "model.onnx is an exported graph"),
        ("eval-16s", "needs an FCN-32s on VGG16, got fcn16s"),
        ("eval-tiles", "--shift-and-stitch 2: evaluates whole images"),
        ("upper-bound-model", "--upper-bound scores the labels alone"),
        ("factor", "argument --shift-and-stitch: invalid choice: 3"),
    ],
)
def test_what_it_cannot_do_is_refused_naming_the_flag(
    command: str,
    message: str,
    *,
    fcn32s: Path,
    synth: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read")
    data = ["--data", str(synth), "--workers", "0"]
    argv = {
        "eval-onnx": ["eval", "--checkpoint", str(onnx), *data, "--shift-and-stitch", "2"],
        "predict-onnx": [
            "predict", str(onnx), "--checkpoint", str(onnx), "--out", str(tmp_path / "o"),
            "--shift-and-stitch", "2",
        ],
        "eval-16s": [
            "eval", "--checkpoint", str(random_checkpoint(tmp_path, "fcn16s")), *data,
            "--shift-and-stitch", "2",
        ],
        "eval-tiles": [
            "eval", "--checkpoint", str(fcn32s), *data, "--shift-and-stitch", "2",
            "--tile-size", "400",
        ],
        "upper-bound-model": ["eval", "--upper-bound", "--checkpoint", str(fcn32s), *data],
        "factor": ["eval", "--checkpoint", str(fcn32s), *data, "--shift-and-stitch", "3"],
    }[command]  # fmt: skip
    if command == "factor":
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    else:
        assert main(argv) == 2
    assert message in capsys.readouterr().err
