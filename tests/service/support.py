"""Helpers of the service tests: images, settings, a running in-process app, metric reading."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.main import create_app

NUM_CLASSES = 5
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth H x W x 3 uint8 test image with at most 216 colours (so GIF is lossless)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(2, 6, size=3)
    channels = [
        np.sin(freq[c] * xx / max(width, 1) * np.pi + phase[c])
        * np.cos(freq[c] * yy / max(height, 1) * np.pi)
        for c in range(3)
    ]
    levels = np.round((np.stack(channels, -1) + 1) / 2 * 5)  # 6 levels per channel
    return (levels * 51).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str, **options: Any) -> bytes:
    """Encode an array or a Pillow image with Pillow."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def settings(model: Path, **overrides: Any) -> Settings:
    """Fast test settings: CPU, a tiny warm-up, two threads at most."""
    values: dict[str, Any] = {
        "model_path": model,
        "providers": "cpu",
        "warmup_sizes": "16x16",
        "max_delay_ms": 20,
        "intra_op_threads": 2,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30) -> None:
    """Poll /readyz until it answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await client.get("/readyz")).status_code != 200:
        assert loop.time() < deadline, "the service did not become ready"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if ready:
                await wait_ready(client)
            yield client


@contextlib.asynccontextmanager
async def serve(model: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A ready in-process app on ``model`` with test settings and ``overrides``."""
    async with running(create_app(settings(model, **overrides))) as client:
        yield client


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def metrics(client: httpx.AsyncClient) -> str:
    """GET /metrics."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def wait_metric(
    client: httpx.AsyncClient, name: str, value: float, timeout_s: float = 30, **labels: str
) -> None:
    """Poll /metrics until ``name`` reaches ``value``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while metric(await metrics(client), name, **labels) < value:
        assert loop.time() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.005)


def png_labels(content: bytes) -> np.ndarray:
    """The class ids of a label-map PNG."""
    picture = Image.open(io.BytesIO(content))
    assert picture.mode == "P"
    return np.asarray(picture)


def reference_labels(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    """Labels of one H x W x 3 image straight from ONNX Runtime."""
    (labels,) = session.run(["labels"], {"image": np.ascontiguousarray(image)[None]})
    return np.asarray(labels[0])


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """A COCO uncompressed RLE back to an H x W bool mask (column-major counts)."""
    height, width = rle["size"]
    values = np.zeros(sum(rle["counts"]), dtype=bool)
    position, on = 0, False
    for count in rle["counts"]:
        values[position : position + count] = on
        position += count
        on = not on
    assert position == height * width
    return values.reshape((height, width), order="F")
