"""Several images of one request through the batcher (``service.fanout``): in order, a batch's
worth at a time, under one deadline, and nothing left queued once the request gives up."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import Batcher, Ticket
from service.errors import RequestTimeoutError
from service.fanout import predict_batches
from service.metrics import Metrics
from service.prediction import Prediction
from service.runtime import Runtime
from tests.images import pattern
from tests.service.support import metric
from tests.service.test_batching import Gate, hold, started, submit

pytestmark = pytest.mark.anyio


async def drain(
    batcher: Batcher, ticket: Ticket, images: list[np.ndarray], deadline: float, timeout_s: float
) -> None:
    """Run ``images`` through ``predict_batches`` to the end, keeping nothing."""
    async for _ in predict_batches(batcher, ticket, images, deadline=deadline, timeout_s=timeout_s):
        pass


async def test_the_images_come_back_in_order_a_batch_at_a_time(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    gate.open.set()
    images = [pattern(8, 8, seed=seed) for seed in range(5)]
    async with started(gate, metrics, max_batch_size=2) as batcher:
        with batcher.admit() as ticket:
            deadline = asyncio.get_running_loop().time() + 30
            batches = [
                batch
                async for batch in predict_batches(
                    batcher, ticket, images, deadline=deadline, timeout_s=30
                )
            ]
    assert [len(batch) for batch in batches] == [2, 2, 1]
    predictions: list[Prediction] = [p for batch in batches for p in batch]
    for image, prediction in zip(images, predictions, strict=True):
        alone = runtime.run(image[None])
        np.testing.assert_array_equal(prediction.labels, alone["labels"][0])
        np.testing.assert_array_equal(prediction.confidence, alone["confidence"][0])


async def test_past_the_deadline_all_fail_with_the_one_message_and_none_run(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics, max_batch_size=3) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))
        images = [pattern(9, 9, seed=seed) for seed in range(3)]
        with batcher.admit() as ticket, pytest.raises(RequestTimeoutError) as late:
            await drain(batcher, ticket, images, asyncio.get_running_loop().time() + 0.05, 7)
        gate.open.set()
        await first
        after = await submit(batcher, pattern(10, 10), timeout_s=30)
    assert str(late.value) == "no result within 7 s (FCN_REQUEST_TIMEOUT_S); retry later"
    assert after.batch_size == 1
    assert gate.shapes == [(1, 8, 8, 3), (1, 10, 10, 3)]
    assert metrics.dropped.labels("cancelled")._value.get() == 3


async def test_a_request_that_gives_up_leaves_none_of_its_images_queued(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics, max_batch_size=3) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))
        with batcher.admit() as ticket:
            deadline = asyncio.get_running_loop().time() + 30
            images = [pattern(9, 9, seed=seed) for seed in range(6)]

            consuming = asyncio.ensure_future(drain(batcher, ticket, images, deadline, 30))
            while metric(metrics.render().decode(), "fcn_queue_depth") < 3:
                await asyncio.sleep(0.005)
            consuming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consuming
        gate.open.set()
        await first
        await submit(batcher, pattern(10, 10), timeout_s=30)
    # The first batch's three were dropped before the model; the next three never queued.
    assert gate.shapes == [(1, 8, 8, 3), (1, 10, 10, 3)]
    assert metrics.dropped.labels("cancelled")._value.get() == 3
