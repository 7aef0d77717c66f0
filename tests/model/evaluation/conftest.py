"""The models and photos the prediction tests share: a tiny FCN-16s checkpoint with scores
that vary, and a folder of odd files (a JPEG, a grey PNG, a WebP with alpha, a text file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import Checkpoint, save_checkpoint
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE

PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = build_fcn(ModelSpec("fcn16s", 4, 1 / 32))
    for name in ("score_fr", "score_pool4"):
        torch.nn.init.normal_(getattr(net, name).weight, std=0.5)
        torch.nn.init.zeros_(getattr(net, name).bias)
    ckpt = Checkpoint(net.spec, net.state_dict(), ["sky", "roof", "tree", "car"], PALETTE, CAFFE)
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (17, 9), dtype=np.uint8), mode="L").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 255, (12, 20, 4), dtype=np.uint8), mode="RGBA").save(
        folder / "c.webp"
    )
    (folder / "notes.txt").write_text("not an image")
    return folder
