"""Synthetic VOC-layout data sets the training and command tests share (read, never written to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training and 8 validation images of 48 x 48."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", 24, 8, (48, 48), seed=0)


@pytest.fixture(scope="session")
def synth96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Larger images: objects big enough for a tiny net to learn in 200 steps."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth96", 24, 8, (96, 96), seed=0)


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training images and one validation image of 32 x 32."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth_voc", 2, 1, (32, 32))
