"""The synthetic VOC-layout set the data tests share, written once, and a copy to spoil."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model.data.synthetic import write_synthetic
from tests.model.data.sets import SIZE


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "voc", 6, 3, SIZE, seed=1)


@pytest.fixture
def voc_copy(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "voc"))
