"""The routes besides POST /segment: /v1/model, /metrics and the probes under load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.cpus import available_cpus
from tests.service.support import (
    PNG,
    TEST_PROVIDER,
    busy,
    metric,
    metrics,
    serve,
)

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_probes_answer_quickly_while_the_model_is_saturated(
    model_path: Path, big_image: bytes
) -> None:
    async with serve(model_path, max_batch_size=1) as client:
        load = [await busy(client, big_image)]
        load += [
            asyncio.ensure_future(
                client.post("/segment", content=big_image, headers={"content-type": "image/bmp"})
            )
            for _ in range(3)
        ]
        latencies = []
        for path in ["/livez", "/readyz", "/v2/health/live", "/v2/health/ready"] * 5:
            start = time.perf_counter()
            response = await client.get(path)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200
        still_busy = metric(await metrics(client), "fcn_batches_running")
        await asyncio.gather(*load)
    assert still_busy == 1
    # Typically ~2 ms; the bound is loose because this 2-core machine is shared.
    assert max(latencies) < 0.5, latencies


async def test_model_endpoint_and_metrics(model_path: Path) -> None:
    overrides = {"max_batch_size": 3, "max_queue": 9, "intra_op_threads": 0}
    async with serve(model_path, **overrides) as client:
        await client.post("/segment?format=json", files={"image": ("a", PNG)})
        await client.post("/segment", files={"image": ("a", b"junk")})
        info = (await client.get("/v1/model")).json()
        text = await metrics(client)
    # The file's identity, its whole fcn.* metadata (contract.schema), then the service's own.
    assert list(info) == [
        "name", "version", "sha256", "schema", "arch", "backbone", "width", "classes",
        "palette", "ignore_index", "dataset", "metrics", "preprocessing", "precision",
        "outputs", "tiling", "origin", "note", "created", "state", "runtime", "input",
        "batching",
    ]  # fmt: skip
    # The default cut: tiles as large as one pass holds, the default overlap.
    assert info["tiling"] == {
        "align": 32,
        "context": 246,
        "exact_overlap": 492,
        "mode": "auto",
        "tile_size": 2628,
        "overlap": 128,
        "max_tiled_pixels": 100_000_000,
    }
    assert info["arch"] == "fcn8s"
    assert info["origin"] == {}  # trained here, not published weights
    assert info["classes"] == [f"class{i}" for i in range(5)]
    assert info["runtime"]["provider"] == TEST_PROVIDER
    assert info["runtime"]["labels"] == "tensor(uint8)"
    # One server process per container takes all the CPUs it is allowed.
    assert info["runtime"]["intra_op_threads"] == available_cpus()
    assert info["input"]["max_model_pixels"] == 8_000_000
    assert info["batching"]["max_batch_pixels"] == 8_000_000
    assert info["input"]["tensor"] == {
        "name": "image",
        "dtype": "uint8",
        "shape": ["N", "H", "W", 3],
    }
    assert info["batching"]["max_batch_size"] == 3
    assert info["batching"]["max_queue"] == 9
    assert info["state"] == "ready"
    assert metric(text, "fcn_requests_total", status="200", format="json") == 1
    assert metric(text, "fcn_requests_total", status="415", format="png") == 1
    for stage in ("decode", "queue", "inference", "encode"):
        assert metric(text, "fcn_stage_duration_seconds_count", stage=stage) == 1
    assert metric(text, "fcn_batch_size_count") == 1
    assert metric(text, "fcn_queue_depth") == 0
    assert metric(text, "fcn_requests_admitted") == 0
    assert metric(text, "fcn_provider_info", provider=TEST_PROVIDER) == 1


async def test_the_provider_fallback_is_published(model_path: Path, cuda_works: bool) -> None:
    # ONNX Runtime's providers, whatever runtime the other tests run on.
    async with serve(model_path, providers="cuda,cpu", runtime="onnxruntime") as client:
        info = (await client.get("/v1/model")).json()
        text = await metrics(client)
    provider = "CUDAExecutionProvider" if cuda_works else "CPUExecutionProvider"
    assert info["runtime"]["provider"] == provider
    assert info["runtime"]["requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert metric(text, "fcn_provider_info", provider=provider) == 1
    # FCN_MAX_BATCH_SIZE=0 (the default): batches on a GPU, single images on CPU.
    assert info["batching"]["max_batch_size"] == (8 if cuda_works else 1)


def noted_copy(model: Path, folder: Path, note: str) -> Path:
    """``model`` with ``note`` as its fcn.note, as `fcn export --note` writes it."""
    import onnx

    proto = onnx.load(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fcn.note", note
    path = folder / model.name
    onnx.save(proto, path)
    return path


async def test_the_models_note_is_published(model_path: Path, tmp_path: Path) -> None:
    note = "synthetic shapes only; for photos serve voc-fcn8s"
    async with serve(noted_copy(model_path, tmp_path, note)) as client:
        assert (await client.get("/v1/model")).json()["note"] == note
    async with serve(model_path) as client:
        assert (await client.get("/v1/model")).json()["note"] == ""
