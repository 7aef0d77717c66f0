"""``fcn export --int8``: a statically quantized file that keeps the contract, its metadata
and its fp32 source's labels, served as is; folders without images refused by name."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.runtimes import openvino_installed
from model.checkpoint import load_checkpoint, save_checkpoint
from model.cli import main
from model.data.synthetic import SYNTH_CLASSES, write_synthetic
from model.export.metadata import read_metadata
from model.export.quantize import (
    QuantizeError,
    compare,
    image_set,
    quantize_file,
)
from model.export.verify import verify_onnx
from tests.factory import exported, tiny_checkpoint
from tests.service.support import png_labels, serve

NUM_CLASSES = len(SYNTH_CLASSES)
DEMO_MODEL = Path(__file__).resolve().parents[3] / "models" / "demo" / "fcn8s.onnx"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled VOC-layout set of the synthetic generator's classes (train and val)."""
    return write_synthetic(tmp_path_factory.mktemp("synth") / "set", 6, 4, (40, 52), seed=1)


@pytest.fixture(scope="module")
def int8_export(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``fcn export --int8`` of a tiny FCN-8s calibrated on ``data``: the file, the output."""
    folder = tmp_path_factory.mktemp("int8")
    ckpt = save_checkpoint(tiny_checkpoint("fcn8s", NUM_CLASSES), folder / "ckpt.pt")
    out = folder / "model.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8",
             "--calibration", str(data), "--calibration-count", "4"]
        )  # fmt: skip
    assert code == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_int8_export_reports_agreement_and_mean_iu_of_both(
    int8_export: tuple[Path, str], data: Path
) -> None:
    out, report = int8_export
    assert "PASSED" in report  # the fp32 graph was verified against PyTorch first
    assert f"wrote {out} (int8, " in report
    assert f"calibrated on 4 images of {data} (train)" in report
    assert f"int8 vs fp32 on 4 images of {data} (val):" in report
    assert "labels agree" in report
    assert "mean IU fp32 " in report
    assert ", int8 " in report
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_int8_file_quantizes_the_convolutions_and_keeps_the_metadata(
    int8_export: tuple[Path, str],
) -> None:
    out, _ = int8_export
    onnx.checker.check_model(str(out), full_check=True)
    meta = read_metadata(out)  # the contract's own check, as the service applies it
    checkpoint = tiny_checkpoint("fcn8s", NUM_CLASSES)
    assert meta.arch == "fcn8s"
    assert list(meta.classes) == checkpoint.classes
    assert meta.metrics == {"mean_iu": 0.25}
    assert meta.quantization["format"] == "QDQ"
    assert meta.quantization["calibration"]["images"] == 4
    assert meta.outputs == ("labels", "confidence")  # the softmax stays float, as the argmax
    model = onnx.load(out)
    weights = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def weight_of(node: onnx.NodeProto) -> onnx.NodeProto | None:
        return producers.get(node.input[1])

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # Every convolution reads int8 weights through a DequantizeLinear...
    for conv in convs:
        dq = weight_of(conv)
        assert dq is not None
        assert dq.op_type == "DequantizeLinear"
        assert weights[dq.input[0]].data_type == onnx.TensorProto.INT8
    # ...the bilinear upsampling stays float (no int8 kernel for it on CPU).
    for up in (n for n in model.graph.node if n.op_type == "ConvTranspose"):
        assert weight_of(up) is None
        assert up.input[1] in weights
    assert {o.domain for o in model.opset_import} <= {"", "com.microsoft"}


@pytest.mark.slow
def test_int8_labels_agree_with_fp32_on_a_trained_model(data: Path, tmp_path: Path) -> None:
    # The bundled demo model: trained weights have clear margins between classes, so a
    # label that flips is int8's doing (random tiny nets are all near-ties).
    calibration = image_set(data, count=6)
    result = quantize_file(DEMO_MODEL, tmp_path / "int8.onnx", calibration)
    assert result.scheme["calibration"]["source"] == f"{data} (train)"
    comparison = compare(DEMO_MODEL, result.path, image_set(data, split="val"))
    assert comparison.agreement >= 0.99
    assert comparison.fp32 is not None
    assert comparison.int8 is not None
    assert abs(comparison.int8.mean_iu - comparison.fp32.mean_iu) < 0.02
    assert read_metadata(result.path).metrics == read_metadata(DEMO_MODEL).metrics


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(
    "runtime",
    [
        "onnxruntime",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(not openvino_installed(), reason="no openvino"),
        ),
    ],
)
async def test_the_service_serves_the_int8_file(
    int8_export: tuple[Path, str], runtime: str
) -> None:
    out, _ = int8_export
    image = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    from tests.images import encode

    async with serve(out, runtime=runtime) as client:
        response = await client.post("/segment", files={"image": ("a.png", encode(image, "PNG"))})
        sure = await client.post(
            "/segment?format=confidence", files={"image": ("a.png", encode(image, "PNG"))}
        )
        info = (await client.get("/v1/model")).json()
    assert response.status_code == 200
    assert sure.status_code == 200, sure.text
    labels = png_labels(response.content)
    assert labels.shape == (37, 29)
    assert int(labels.max()) < NUM_CLASSES
    assert info["arch"] == "fcn8s"
    assert info["precision"] == "fp32"
    assert info["quantization"]["format"] == "QDQ"
    assert info["runtime"]["name"] == runtime


@pytest.mark.slow
def test_a_plain_folder_calibrates_and_compares_without_mean_iu(data: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((data / "JPEGImages").iterdir())[:3]:
        shutil.copy(src, photos / src.name)
    (photos / "notes.txt").write_text("not an image")
    images = image_set(photos)
    assert len(images) == 3
    assert not images.labelled
    _, fp32 = exported("fcn32s", num_classes=NUM_CLASSES)
    result = quantize_file(fp32, tmp_path / "int8.onnx", images)
    report = str(compare(fp32, result.path, images))
    assert "on 3 images of" in report
    assert "mean IU: not measured (no labels in this folder)" in report


def test_a_folder_without_images_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    out = tmp_path / "model.onnx"
    code = main(
        ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out),
         "--int8", "--calibration", str(empty)]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"--calibration {empty}: no images" in err
    assert "and not a data set (VOC, SBD or images/ + masks/)" in err
    assert not out.exists()


def test_a_plain_folder_gives_its_images_at_any_depth_leaving_hidden_ones_out(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    for name in ("b.png", "a/x.jpg", "a/deeper/y.PNG", ".hidden.png", ".cache/z.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"not decoded until calibration")
    (photos / "a" / "notes.txt").write_text("not an image")
    images = image_set(photos)
    assert images.images == (photos / "a/deeper/y.PNG", photos / "a/x.jpg", photos / "b.png")
    assert images.source == str(photos)
    assert not images.labelled
    assert len(image_set(photos, count=2)) == 2


def test_two_images_with_one_stem_are_refused_naming_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(b"x")
    (photos / "cat.jpg").write_bytes(b"x")
    out = tmp_path / "model.onnx"
    code = main(
        ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out),
         "--int8", "--calibration", str(photos)]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"--calibration {photos}: " in err
    assert "would both write the outputs of cat" in err
    assert not out.exists()


@pytest.mark.slow
def test_an_unusable_source_leaves_the_target_untouched(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the old model")
    images = image_set(data, count=1)
    _, wrong_classes = exported("fcn32s", num_classes=5)
    with pytest.raises(QuantizeError, match=f"6 classes, but {wrong_classes} predicts 5"):
        quantize_file(wrong_classes, out, images)
    _, half = exported("fcn32s", fp16=True)
    with pytest.raises(QuantizeError, match="is fp16; int8 starts from an fp32 export"):
        quantize_file(half, out, images)
    assert out.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--int8"], "--int8 needs --calibration DIR"),
        (["--calibration", "x"], "--calibration: only with --int8"),
        (["--int8", "--calibration", "x", "--fp16"], "--int8 and --fp16: choose one"),
        (["--int8", "--calibration", "x", "--calibration-count", "0"], "--calibration-count 0"),
        (["--int8", "--calibration", "x", "--out", "nowhere/m.onnx"], "folder nowhere does not"),
    ],
    ids=["no-calibration", "calibration-alone", "with-fp16", "no-images", "out-folder"],
)
def test_int8_flags_are_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "model.onnx"
    args = ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]
    assert main([*args, *flags]) == 2  # the last --out given wins
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_verify_onnx_holds_an_int8_file_to_the_int8_bar(
    int8_export: tuple[Path, str],
) -> None:
    out, _ = int8_export
    report = verify_onnx(out, load_checkpoint(out.parent / "ckpt.pt"), cases=[(1, 37, 45)])
    assert report.precision == "int8"
    assert report.min_agreement == 0.98
    assert report.logit_tolerance is None  # int8 logits are reported, not bounded
    assert not report.problems  # the checker and the contract pass as for any export
    assert "int8" in str(report)


@pytest.mark.slow
def test_fcn_info_names_an_int8_file_int8(
    int8_export: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = int8_export
    assert main(["info", str(out)]) == 0
    assert "ONNX schema 1, int8 (QDQ)," in capsys.readouterr().out
