"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

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
