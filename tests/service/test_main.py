"""The app's lifespan: the model refused at start-up with the contract's words, and what is
left at shutdown answered with 503."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.schema import MetadataError, parse_metadata
from service.errors import StartupError
from service.main import create_app
from tests.service.support import (
    PALETTE,
    PNG,
    WIDTH8_METADATA,
    assert_error,
    busy,
    running,
    settings,
    wait_metric,
)

pytestmark = pytest.mark.anyio


async def start(model: Path) -> None:
    """Run the app's start-up on ``model`` (and its shutdown, if it starts)."""
    app = create_app(settings(model))
    async with app.router.lifespan_context(app):
        pass


def contract_refusal(metadata: dict[str, str], path: Path) -> str:
    """What ``contract.schema.parse_metadata`` says of ``metadata`` read from ``path``."""
    with pytest.raises(MetadataError) as caught:
        parse_metadata(metadata, str(path))
    return str(caught.value)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"fcn.dataset": None}, "not an FCN model, metadata lacks fcn.dataset"),
        ({"fcn.palette": json.dumps(PALETTE[:3])}, "fcn.palette has 3 colours for 4 classes"),
        ({"fcn.schema": "7"}, "fcn.schema is '7', this reader knows '1'"),
    ],
    ids=["missing-key", "short-palette", "other-schema"],
)
async def test_startup_refuses_a_model_with_the_contracts_own_words(
    width8_model: Callable[[dict[str, str]], Path], edit: dict[str, str | None], words: str
) -> None:
    metadata = {**WIDTH8_METADATA, **edit}
    metadata = {key: value for key, value in metadata.items() if value is not None}
    path = width8_model(metadata)
    expected = contract_refusal(metadata, path)
    assert expected == f"{path}: {words}"
    with pytest.raises(StartupError) as caught:
        await start(path)
    # Exactly the contract's message, nothing added: `fcn verify-onnx` says the same.
    assert str(caught.value) == expected


async def test_startup_refuses_a_cpu_fallback_when_a_gpu_is_required(
    model_path: Path, cuda_works: bool
) -> None:
    if cuda_works:
        pytest.skip("a CUDA device works here")
    app = create_app(settings(model_path, providers="cuda,cpu", require_gpu=True))
    with pytest.raises(StartupError, match="FCN_REQUIRE_GPU"):
        async with app.router.lifespan_context(app):
            pass
    assert app.state.service.startup_error is not None  # the server logs it as one line


@pytest.mark.runtimes
async def test_a_shutdown_out_of_time_answers_what_is_left_with_503(
    model_path: Path, big_image: bytes
) -> None:
    app = create_app(settings(model_path, max_batch_size=1, drain_timeout_s=0.05))
    async with running(app) as client:
        blocker = await busy(client, big_image)
        queued = asyncio.ensure_future(client.post("/segment", files={"image": ("a", PNG)}))
        await wait_metric(client, "fcn_queue_depth", 1)
    # The lifespan is over: the drain waited 0.05 s, then answered both.
    for response in await asyncio.gather(blocker, queued):
        message = assert_error(response, 503, "not_ready")["message"]
        assert "shut down before the result" in message
