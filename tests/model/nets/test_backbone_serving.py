"""A network on another backbone goes the whole way: checkpoint, verified ONNX export whose
metadata names its backbone and tiling, ``fcn info``, the contract's reader, and the
service's /segment answering the labels PyTorch gives."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from contract.palette import voc_colormap
from contract.schema import parse_metadata
from model.checkpoint import Checkpoint, save_checkpoint
from model.cli import main
from model.export.exporter import export_onnx
from model.nets.base import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE, TORCHVISION, Normalize
from tests.service.support import png_labels, serve

pytestmark = pytest.mark.anyio

WIDTH = 1 / 32
CLASSES = 4
PREPROCESSING = {"caffe-alexnet": CAFFE, "alexnet": TORCHVISION}


def tiny_checkpoint(backbone: str) -> Checkpoint:
    torch.manual_seed(0)
    net = build_fcn(ModelSpec("fcn32s", CLASSES, WIDTH, backbone=backbone))
    # Every convolution random, the score layer too, so that labels vary across the image.
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.normal_(module.bias, 0, 0.1)
    names = [f"class{i}" for i in range(CLASSES)]
    return Checkpoint(
        net.spec, net.state_dict(), names, voc_colormap(CLASSES), PREPROCESSING[backbone]
    )


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(PREPROCESSING))
async def test_an_export_serves_the_labels_of_the_checkpoint(
    tmp_path: Path, backbone: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tiny_checkpoint(backbone)
    ckpt_path = tmp_path / "net.pt"
    save_checkpoint(checkpoint, ckpt_path)
    assert main(["info", str(ckpt_path)]) == 0
    printed = capsys.readouterr().out
    assert f"fcn32s ({backbone}, width {WIDTH})" in printed
    assert "tiling: align 32, context 208" in printed

    path = export_onnx(checkpoint, tmp_path / "net.onnx")  # verified against PyTorch
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["fcn.backbone"] == backbone
    meta = parse_metadata(props, str(path))
    assert (meta.tiling.align, meta.tiling.context) == (32, 208)
    assert main(["info", str(path)]) == 0
    assert f"fcn32s ({backbone}, width {WIDTH})" in capsys.readouterr().out

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    net = checkpoint.build_model().eval()
    with torch.no_grad():
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
        logits = net(Normalize(checkpoint.preprocessing)(pixels))
    expected = logits.argmax(1)[0].numpy()
    certainty = (255 * logits.double().softmax(1).amax(1)[0]).round().numpy()
    assert len(np.unique(expected)) > 1
    async with serve(path) as client:
        response = await client.post("/segment", files={"image": ("a", buffer.getvalue())})
        sure = await client.post(
            "/segment?format=confidence", files={"image": ("a", buffer.getvalue())}
        )
        model = (await client.get("/v1/model")).json()
    assert response.status_code == 200
    labels = png_labels(response.content)
    # ONNX Runtime's float32 may flip a label where two scores all but tie.
    assert (labels == expected).mean() > 0.99
    assert sure.status_code == 200, sure.text
    confidence = np.asarray(Image.open(io.BytesIO(sure.content)), dtype=np.int16)
    assert np.abs(confidence - certainty).max() <= 1
    assert model["backbone"] == backbone
