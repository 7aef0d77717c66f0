"""``fcn predict``: palette PNG label maps (pixel = class id, the checkpoint's colours) and
overlays, for single images and folders, large images cut into tiles, with bad inputs and
flags named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.decode import decode_image
from contract.palette import palette_bytes, voc_colormap
from contract.runtimes import openvino_installed
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.cli import main
from model.data.datasets import read_label_png
from model.data.synthetic import write_synthetic
from model.evaluation.predict import predict
from model.evaluation.predictors import PredictError
from model.evaluation.tiles import TileOptions
from model.export.exporter import export_onnx
from model.nets.fcn import ModelSpec, build_fcn, network_tiling
from model.nets.preprocessing import CAFFE, Normalize
from tests.factory import exported
from tests.images import pattern
from tests.model.evaluation.conftest import PALETTE
from tests.model.evaluation.margins import TIE, smallest_margin

MANY = 300
# Larger than the smallest tile at the exact overlap (548 for FCN-16s) both ways, and odd.
LARGE = (589, 717)
EXACT = network_tiling("fcn16s").exact_overlap


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 classes: label maps past one byte. FCN-8s, whose largest upsampling is 16x16
    (FCN-32s's 64x64 would make a 1.5 GB checkpoint); random scores, ids 256-299 ahead."""
    torch.manual_seed(2)
    net = build_fcn(ModelSpec("fcn8s", MANY, 1 / 32))
    for name in ("score_fr", "score_pool4", "score_pool3"):
        torch.nn.init.normal_(getattr(net, name).weight, std=0.5)
    with torch.no_grad():
        net.score_fr.bias[256:] = 5.0  # the ids a byte cannot hold win
    names = [f"class{i}" for i in range(MANY)]
    ckpt = Checkpoint(net.spec, net.state_dict(), names, voc_colormap(MANY), CAFFE)
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "many.pt")


@pytest.fixture(scope="module")
def tiled_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny FCN-16s as a checkpoint and its export (made once, with the export tests)."""
    ckpt, onnx_path = exported("fcn16s")
    return {
        "pt": save_checkpoint(ckpt, tmp_path_factory.mktemp("tiled") / "model.pt"),
        "onnx": onnx_path,
    }


@pytest.fixture(scope="module")
def large_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large.png"
    Image.fromarray(pattern(*LARGE, seed=3)).save(path)
    return path


def expected_labels(checkpoint: Path, path: Path) -> np.ndarray:
    ckpt = load_checkpoint(checkpoint)
    image = torch.from_numpy(np.array(decode_image(path))).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = ckpt.build_model().eval()(Normalize(ckpt.preprocessing)(image))
    return logits.argmax(1)[0].numpy()


def test_label_maps_are_palette_pngs_of_class_ids(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    written = predict(checkpoint, [photos], out)
    assert [p.name for p in written] == ["a.png", "b.png", "c.png"]
    classes_seen: set[int] = set()
    for source, size in (
        (photos / "a.jpg", (41, 30)),
        (photos / "b.png", (9, 17)),
        (photos / "c.webp", (20, 12)),
    ):
        with Image.open(out / f"{source.stem}.png") as label:
            assert (label.mode, label.size) == ("P", size)
            assert label.getpalette()[: 3 * 256] == palette_bytes(PALETTE)  # type: ignore[index]
            labels = np.asarray(label)
        assert np.array_equal(labels, expected_labels(checkpoint, source))
        classes_seen |= set(np.unique(labels).tolist())
        with Image.open(out / f"{source.stem}_overlay.jpg") as overlay:
            assert overlay.size == size
    assert len(classes_seen) >= 2  # a real test of the colours, not one flat map


def test_a_nested_folder_is_written_under_its_relative_paths(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # photos/a.jpg, photos/trip/day1/a.png: one name, two stems. Hidden files and the
    # output folder (inside the input folder here) are left out.
    day1 = photos / "trip" / "day1"
    day1.mkdir(parents=True)
    (photos / "b.png").rename(day1 / "a.png")
    (photos / ".hidden").mkdir()
    (photos / ".hidden" / "x.jpg").write_bytes((photos / "a.jpg").read_bytes())
    out = photos / "predicted"
    args = ["predict", "--checkpoint", str(checkpoint), str(photos), "--out", str(out)]
    assert main(args) == 0
    assert "wrote 3 label maps to" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "a.png",
        "a_overlay.jpg",
        "c.png",
        "c_overlay.jpg",
        "trip/day1/a.png",
        "trip/day1/a_overlay.jpg",
    ]
    with Image.open(out / "trip" / "day1" / "a.png") as label:
        assert np.array_equal(np.asarray(label), expected_labels(checkpoint, day1 / "a.png"))
    # Run again: the label maps now under the output folder are not taken as inputs.
    assert main(args) == 0
    assert "wrote 3 label maps to" in capsys.readouterr().out


def test_command_with_a_single_image_and_no_overlay(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(photos / "b.png"), "--out", str(out)]
    assert main([*args, "--no-overlay"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert "wrote 1 label map to" in capsys.readouterr().out


def test_bad_inputs_are_named(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    base = ["predict", "--checkpoint", str(checkpoint), "--out", out]
    assert main([*base, str(tmp_path / "none.jpg")]) == 2
    assert f"{tmp_path / 'none.jpg'}: no such image or folder" in capsys.readouterr().err
    (photos / "a.png").write_bytes(b"broken")
    assert main([*base, str(photos)]) == 2
    assert "a.png and" in capsys.readouterr().err  # two images would write a.png
    (photos / "a.jpg").unlink()
    # An unreadable image is skipped and named; the others are still segmented.
    assert main([*base, str(photos)]) == 1
    captured = capsys.readouterr()
    assert f"skipped {photos / 'a.png'} is not an image format we read" in captured.err
    assert "wrote 2 label maps to" in captured.out
    assert "1 image(s) unreadable" in captured.out
    assert sorted(p.name for p in Path(out).iterdir() if not p.name.endswith("_overlay.jpg")) == [
        "b.png",
        "c.png",
    ]
    # Nothing readable at all: no output folder appears.
    nothing = tmp_path / "nothing"
    bad_only = ["predict", "--checkpoint", str(checkpoint), "--out", str(nothing)]
    assert main([*bad_only, str(photos / "a.png")]) == 1
    assert not nothing.exists()
    assert main([*base, "--alpha", "2", str(photos)]) == 2
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "x.pt"), "--out", out, str(photos)]) == 2
    assert "x.pt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.slow
def test_past_256_classes_label_maps_are_16_bit_pngs_of_class_ids(
    many_classes: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    image = photos / "a.jpg"
    args = ["predict", "--checkpoint", str(many_classes), str(image), "--out", str(out)]
    assert main(args) == 0
    with Image.open(out / "a.png") as label:
        assert (label.mode, label.size) == ("I;16", (41, 30))
    labels = read_label_png(out / "a.png")
    assert np.array_equal(labels, expected_labels(many_classes, image))
    assert labels.max() > 255  # ids a byte cannot hold came through
    with Image.open(out / "a_overlay.jpg") as overlay:
        assert overlay.size == (41, 30)


@pytest.mark.slow
def test_eval_writes_the_same_16_bit_predictions(many_classes: Path, tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", 1, 1, (24, 40), seed=1)
    (data / "classes.json").write_text(json.dumps([f"class{i}" for i in range(MANY)]))
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(many_classes), "--data", str(data), "--out", str(out)]
    assert main([*args, "--predictions", "--workers", "0"]) == 0
    labels = read_label_png(out / "predictions" / "val_000000.png")
    assert np.array_equal(
        labels, expected_labels(many_classes, data / "JPEGImages" / "val_000000.jpg")
    )
    assert labels.max() > 255


@pytest.mark.slow
def test_an_exported_onnx_file_predicts_what_its_checkpoint_does(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    onnx_path = export_onnx(load_checkpoint(checkpoint), tmp_path / "model.onnx", verify=False)
    from_checkpoint = predict(checkpoint, [photos], tmp_path / "pt")
    # ONNX Runtime at fp32: `auto` would take OpenVINO at bf16 where the CPU has it.
    ort_fp32 = {"runtime": "onnxruntime", "precision": "fp32"}
    from_onnx = predict(onnx_path, [photos], tmp_path / "onnx", **ort_fp32)
    assert [p.name for p in from_onnx] == [p.name for p in from_checkpoint]
    for ours, theirs in zip(from_onnx, from_checkpoint, strict=True):
        assert ours.read_bytes() == theirs.read_bytes()
    with pytest.raises(PredictError, match="no_model.onnx: no such model file"):
        predict(tmp_path / "no_model.onnx", [photos], tmp_path / "none")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(PredictError, match="broken.onnx: ONNX Runtime cannot load it"):
        predict(broken, [photos], tmp_path / "none", **ort_fp32)
    if openvino_installed():
        with pytest.raises(PredictError, match="broken.onnx: OpenVINO cannot load it"):
            predict(broken, [photos], tmp_path / "none", runtime="openvino")
    with pytest.raises(PredictError, match="--amp fp16: an ONNX model runs at its exported"):
        predict(onnx_path, [photos], tmp_path / "amp", amp="fp16")


def label_map_bytes(model: Path, photo: Path, out: Path, flags: list[str]) -> bytes:
    args = ["predict", "--checkpoint", str(model), str(photo), "--out", str(out), "--no-overlay"]
    if model.suffix == ".onnx":  # fp32, as the margins are measured (auto may take bf16)
        args += ["--runtime", "onnxruntime", "--precision", "fp32"]
    assert main([*args, *flags]) == 0
    return (out / f"{photo.stem}.png").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_tiles_at_the_exact_overlap_give_the_untiled_label_map(
    kind: str, tiled_models: dict[str, Path], large_photo: Path, tmp_path: Path
) -> None:
    model = tiled_models[kind]
    # No label is within float noise of a tie, so a tile's labels can equal the whole's.
    assert smallest_margin(load_checkpoint(tiled_models["pt"]), decode_image(large_photo)) > TIE
    whole = label_map_bytes(model, large_photo, tmp_path / "whole", [])
    with Image.open(tmp_path / "whole" / "large.png") as label:
        assert len(np.unique(np.asarray(label))) >= 3  # seams in the wrong place would show
    # 576: 2 x 4 tiles; 640: 1 x 2; a pass of 650,000 pixels: tiled without --tile-size.
    plan = TileOptions(576, EXACT).plan(*LARGE, network_tiling("fcn16s"))
    assert plan is not None
    assert (plan.rows.count, plan.cols.count) == (2, 4)
    for flags in (["--tile-size", "576"], ["--tile-size", "640"], ["--max-model-pixels", "650000"]):
        out = tmp_path / "_".join(flags)
        tiled = label_map_bytes(model, large_photo, out, [*flags, "--tile-overlap", str(EXACT)])
        assert tiled == whole, flags
    # The default overlap (the service's) trades labels near the seams: tiles were cut.
    assert label_map_bytes(model, large_photo, tmp_path / "o128", ["--tile-size", "576"]) != whole


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tile-size", "-1"], "--tile-size must be 0 (no forced tiling) or more, got -1"),
        (["--tile-overlap", "-8"], "--tile-overlap must be 0 or more, got -8"),
        (["--max-model-pixels", "0"], "--max-model-pixels must be 1 or more, got 0"),
        (
            ["--tile-size", "300", "--tile-overlap", "492"],
            "--tile-size 300 (with --max-model-pixels 8000000): tiles of 300 pixels cannot "
            "overlap by 492",
        ),
        (
            ["--tile-size", "3000"],
            "--tile-size 3000 (with --max-model-pixels 8000000): a tile of 3000x3000 is "
            "10240000 pixels",
        ),
        (
            ["--max-model-pixels", "100000"],
            "--tile-overlap 128 (with --max-model-pixels 100000): tiles of 116 pixels cannot "
            "overlap by 128",
        ),
    ],
    ids=["negative-size", "negative-overlap", "no-pixels", "tile-under-overlap",
         "tile-over-limit", "limit-under-overlap"],
)  # fmt: skip
def test_bad_tiling_flags_are_named_before_the_model_is_read(
    photos: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No such checkpoint: the flag is refused first.
    args = ["predict", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]
    assert main([*args, str(photos), *flags]) == 2
    assert message in capsys.readouterr().err


def test_images_past_pillows_bomb_limit_are_read_up_to_max_image_pixels(
    checkpoint: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow refuses twice its limit as a bomb: here a 41 x 30 photo stands for a 100 MP one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    (written,) = predict(checkpoint, [photos / "a.jpg"], tmp_path / "out", max_image_pixels=2_000)
    with Image.open(written) as label:
        assert label.size == (41, 30)
    with pytest.raises(PredictError) as caught:
        predict(checkpoint, [photos / "a.jpg"], tmp_path / "out", max_image_pixels=1_000)
    refusal = "a.jpg is 41x30 = 1230 pixels; the limit is 1000 pixels, set by --max-image-pixels"
    assert str(caught.value).endswith(refusal)


def test_the_cli_names_its_pixel_limit_flag(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main([*args, "--max-image-pixels", "1000", str(photos / "a.jpg")]) == 1
    assert "the limit is 1000 pixels, set by --max-image-pixels" in capsys.readouterr().err
    assert main([*args, "--max-image-pixels", "0", str(photos / "a.jpg")]) == 2
    assert "--max-image-pixels must be 1 or more, got 0" in capsys.readouterr().err


def test_an_onnx_file_runs_quietly_where_cuda_cannot_load(
    photos: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """On a machine without a GPU driver, ONNX Runtime's errors about its CUDA libraries stay
    out of the output, as in the service: the provider is not asked for (contract.providers)."""
    import onnxruntime as ort

    from contract.providers import missing_library

    if missing_library("CUDAExecutionProvider", Path(ort.__file__).parent) is None:
        pytest.skip("ONNX Runtime's CUDA libraries load here")
    _, onnx_path = exported("fcn8s")
    out = str(tmp_path / "out")
    assert main(["predict", "--checkpoint", str(onnx_path), "--out", out, str(photos)]) == 0
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out.startswith("wrote ")
