"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _pillow_bomb_threshold() -> Iterator[None]:
    """The service raises Pillow's process-wide bomb threshold to FCN_MAX_PIXELS at start
    (``contract.decode.guard_bombs``); each test starts from Pillow's own."""
    threshold = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = threshold


@pytest.fixture
def anyio_backend() -> str:
    """The service runs on asyncio (uvicorn's loop), so async tests do too, even where trio
    is installed (selenium brings it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The tiny FCN-8s (width 1/32, 5 classes) as ``fcn8s-tiny.onnx``: labels and confidence,
    as ``fcn export`` writes it; from the suite's one factory (``tests.factory``), read-only."""
    from tests.factory import exported_as

    return exported_as("fcn8s-tiny")


@pytest.fixture(scope="session")
def model_with_scores_path() -> Path:
    """The same network exported with its ``scores`` output too."""
    from tests.factory import exported_as

    return exported_as("fcn8s-tiny-scores", with_scores=True)


@pytest.fixture(scope="session")
def model_without_confidence_path() -> Path:
    """The same network exported without its ``confidence`` output (``--no-confidence``, or
    a file from before confidence existed)."""
    from tests.factory import exported_as

    return exported_as("fcn8s-tiny-noconf", confidence=False)
