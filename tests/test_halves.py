"""Both halves apply one contract: ``fcn predict`` and ``POST /segment`` give the same bytes
for the same model and image, and a file either refuses, the other refuses in the same words.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from contract.decode import decode_image
from contract.runtimes import native_bf16, openvino_installed
from contract.schema import MetadataError, parse_metadata
from model.checkpoint import save_checkpoint
from model.cli import main
from model.evaluation.predict import predict
from service.errors import StartupError
from service.main import create_app
from tests.factory import exported, exported_two_head
from tests.images import odd_images
from tests.service.support import TEST_RUNTIME, running, serve, settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The odd files users send, one per decoding rule, named by kind."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, data in odd_images().items():
        suffix = ".jpg" if data.startswith(b"\xff\xd8") else ".png"
        (folder / f"{name}{suffix}").write_bytes(data)
    return folder


needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed")
needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="no native bf16 on this CPU")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("source", "runtime", "precision"),
    [
        ("onnx", "onnxruntime", "fp32"),
        pytest.param("onnx", "openvino", "fp32", marks=needs_openvino),
        pytest.param("onnx", "openvino", "bf16", marks=[needs_openvino, needs_bf16]),
        ("checkpoint", "onnxruntime", "fp32"),
    ],
)
async def test_predict_and_the_service_give_identical_labels_overlays_and_confidence(
    source: str, runtime: str, precision: str, corpus: Path, tmp_path: Path
) -> None:
    checkpoint, onnx_path = exported("fcn8s")
    choice = {"runtime": runtime, "precision": precision}
    if source == "checkpoint":  # PyTorch on the CPU against ONNX Runtime in the service
        model = save_checkpoint(checkpoint, tmp_path / "fcn8s.pt")
        written = predict(model, [corpus], tmp_path / "out", confidence=True)
    else:  # the same file on the same runtime and precision
        written = predict(onnx_path, [corpus], tmp_path / "out", confidence=True, **choice)
    assert len(written) == len(odd_images())
    classes_seen: set[int] = set()
    async with serve(onnx_path, **choice) as client:
        where = (await client.get("/v1/model")).json()["runtime"]
        assert (where["name"], where["precision"]) == (runtime, precision)
        for label_png in written:
            photo = next(corpus.glob(f"{label_png.stem}.*"))
            body = photo.read_bytes()
            media = "image/jpeg" if photo.suffix == ".jpg" else "image/png"
            headers = {"content-type": media}
            labels = await client.post("/segment", content=body, headers=headers)
            assert labels.status_code == 200, labels.text
            assert labels.content == label_png.read_bytes(), photo.name
            overlay = await client.post(
                "/segment?format=overlay&image_format=jpeg", content=body, headers=headers
            )
            assert overlay.status_code == 200, overlay.text
            overlay_jpg = label_png.with_name(f"{label_png.stem}_overlay.jpg")
            assert overlay.content == overlay_jpg.read_bytes(), photo.name
            sure = await client.post("/segment?format=confidence", content=body, headers=headers)
            assert sure.status_code == 200, sure.text
            sure_png = label_png.with_name(f"{label_png.stem}_confidence.png")
            if source == "onnx":  # the same graph: the same bytes
                assert sure.content == sure_png.read_bytes(), photo.name
            else:  # PyTorch's softmax against the graph's: a rounding tie may move by one
                served = np.asarray(Image.open(io.BytesIO(sure.content)), dtype=np.int16)
                assert np.abs(served - np.asarray(Image.open(sure_png))).max() <= 1
            with Image.open(label_png) as picture:
                height, width = decode_image(body).shape[:2]
                assert picture.size == (width, height)  # EXIF-rotated: the turned size
                classes_seen |= set(np.unique(np.asarray(picture)).tolist())
    assert len(classes_seen) >= 2  # a real comparison, not one flat map


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize("source", ["onnx", "checkpoint"])
async def test_predict_and_the_service_give_identical_geometry_of_a_two_head_model(
    source: str, corpus: Path, tmp_path: Path
) -> None:
    checkpoint, onnx_path = exported_two_head()
    out = tmp_path / "out"
    if source == "checkpoint":  # PyTorch's second head against ONNX Runtime's
        model = save_checkpoint(checkpoint, tmp_path / "two-head.pt")
        written = predict(model, [corpus], out, overlays=False)
    else:  # the same file on the service's runtime and precision
        written = predict(onnx_path, [corpus], out, overlays=False, **TEST_RUNTIME)
    kinds_seen: set[int] = set()
    async with serve(onnx_path) as client:
        for label_png in written:
            photo = next(corpus.glob(f"{label_png.stem}.*"))
            media = "image/jpeg" if photo.suffix == ".jpg" else "image/png"
            geometry = await client.post(
                "/segment?output=geometry",
                content=photo.read_bytes(),
                headers={"content-type": media},
            )
            assert geometry.status_code == 200, geometry.text
            written_png = label_png.with_name(f"{label_png.stem}_geometry.png")
            assert geometry.content == written_png.read_bytes(), photo.name
            with Image.open(written_png) as picture:
                kinds_seen |= set(np.unique(np.asarray(picture)).tolist())
    assert len(kinds_seen) >= 2  # a real comparison, not one flat map


def _broken(path: Path, out: Path, *, drop: str | None = None, palette: int | None = None) -> Path:
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    if drop is not None:
        del props[drop]
    if palette is not None:
        props["fcn.palette"] = json.dumps(json.loads(props["fcn.palette"])[:palette])
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out)
    return out


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("drop", "palette", "words"),
    [
        ("fcn.dataset", None, "metadata lacks fcn.dataset"),
        (None, 2, "fcn.palette has 2 colours for 5 classes"),
    ],
    ids=["missing-key", "short-palette"],
)
async def test_verify_onnx_and_the_service_refuse_a_file_in_the_same_words(
    drop: str | None,
    palette: int | None,
    words: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint, good = exported("fcn8s")
    bad = _broken(good, tmp_path / "bad.onnx", drop=drop, palette=palette)
    with pytest.raises(MetadataError) as contract:
        parse_metadata({p.key: p.value for p in onnx.load(bad).metadata_props}, str(bad))
    message = str(contract.value)
    assert words in message
    ckpt = save_checkpoint(checkpoint, tmp_path / "fcn8s.pt")
    assert main(["verify-onnx", str(bad), "--checkpoint", str(ckpt)]) == 1
    verdict = capsys.readouterr().out
    assert f"    - {message}\n" in verdict
    assert "FAILED" in verdict
    with pytest.raises(StartupError) as refused:
        async with running(create_app(settings(bad))):
            pass
    assert str(refused.value) == message


@pytest.mark.anyio
async def test_a_legend_is_the_same_from_fcn_predict_and_the_service(tmp_path: Path) -> None:
    _, onnx_path = exported("fcn8s")
    photo = tmp_path / "photo.png"
    photo.write_bytes(odd_images()["photo"])
    assert main(["predict", "--checkpoint", str(onnx_path), str(photo), "--out",
                 str(tmp_path / "out"), "--legend"]) == 0  # fmt: skip
    written = (tmp_path / "out" / "photo_overlay.jpg").read_bytes()
    body, headers = photo.read_bytes(), {"content-type": "image/png"}
    # Both halves left to choose (auto): the same runtime and precision, the same bytes.
    async with serve(onnx_path, runtime="auto", precision="auto") as client:
        legend = await client.post(
            "/segment?format=overlay&image_format=jpeg&legend=true", content=body, headers=headers
        )
        plain = await client.post(
            "/segment?format=overlay&image_format=jpeg", content=body, headers=headers
        )
        # A legend is an overlay's option: a label map ignores it, as it ignores ?alpha=.
        labels = await client.post("/segment?format=png", content=body, headers=headers)
        ignored = await client.post(
            "/segment?format=png&legend=true", content=body, headers=headers
        )
    assert legend.status_code == 200, legend.text
    assert legend.content == written
    with Image.open(io.BytesIO(legend.content)) as a, Image.open(io.BytesIO(plain.content)) as b:
        assert a.width == b.width
        assert a.height > b.height  # the strip below
    assert ignored.status_code == labels.status_code == 200
    assert ignored.content == labels.content
    assert main(["predict", "--checkpoint", str(onnx_path), str(photo), "--out",
                 str(tmp_path / "x"), "--legend", "--no-overlay"]) == 2  # fmt: skip


@pytest.mark.anyio
async def test_a_choice_neither_half_can_meet_is_refused_in_the_same_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, onnx_path = exported("fcn8s")
    photo = tmp_path / "photo.png"
    photo.write_bytes(odd_images()["photo"])
    flags = ["--runtime", "onnxruntime", "--precision", "bf16"]
    assert main(["predict", "--checkpoint", str(onnx_path), str(photo), "--out",
                 str(tmp_path / "out"), *flags]) == 2  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("--precision bf16: bf16 runs on OpenVINO only")
    with pytest.raises(StartupError) as refused:
        async with running(
            create_app(settings(onnx_path, runtime="onnxruntime", precision="bf16"))
        ):
            pass
    assert str(refused.value) == "FCN_PRECISION=bf16: bf16 runs on OpenVINO only"
