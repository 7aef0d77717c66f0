"""The batcher on a real ONNX Runtime session: admission, grouping, slices, limits and failures.

A gate (a threading.Event) in front of the real session holds the inference thread, so the
tests decide what is queued when the next batch forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from contract.tiling import padded_pixels
from service.batching import Batcher
from service.errors import (
    ClientGoneError,
    InferenceError,
    NotReadyError,
    OverloadedError,
    RequestTimeoutError,
)
from service.main import create_app
from service.metrics import Metrics
from service.prediction import Prediction
from service.runtime import Runtime
from tests.images import encode, pattern
from tests.service.support import (
    TEST_RUNTIME,
    asgi_post,
    assert_error,
    busy,
    metric,
    running,
    runtime_of,
    settings,
    wait_metric,
)
from tests.service.support import metrics as scrape

pytestmark = pytest.mark.anyio


class Gate:
    """The real session behind a gate; records the batch shapes it ran."""

    def __init__(self, run: Callable[[NDArray[np.uint8]], dict[str, NDArray[Any]]]):
        self.run = run
        self.open = threading.Event()
        self.entered = threading.Event()
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: NDArray[np.uint8]) -> dict[str, NDArray[Any]]:
        self.entered.set()
        assert self.open.wait(30)
        self.shapes.append(batch.shape)
        return self.run(batch)


@contextlib.asynccontextmanager
async def started(gate: Gate, metrics: Metrics, **options: Any) -> AsyncIterator[Batcher]:
    values: dict[str, Any] = {
        "max_batch_size": 8,
        "max_batch_pixels": 10**9,
        "max_delay_s": 0.0,
        "max_queue": 16,
        "retry_after_s": 2,
        "metrics": metrics,
    }
    values.update(options)
    batcher = Batcher(gate, **values)
    batcher.start()
    try:
        yield batcher
    finally:
        gate.open.set()
        await batcher.stop(5)


async def submit(batcher: Batcher, image: np.ndarray, **options: Any) -> Prediction:
    """Admit a request and queue its ``image``, as the pipeline does."""
    with batcher.admit() as ticket:
        return await batcher.predict(ticket, image, **options)


async def hold(batcher: Batcher, gate: Gate, image: np.ndarray) -> asyncio.Task[Prediction]:
    """Submit ``image`` and wait until the inference thread is held on it."""
    task = asyncio.ensure_future(submit(batcher, image, timeout_s=30))
    while not gate.entered.is_set():
        await asyncio.sleep(0.001)
    return task


def depth(metrics: Metrics) -> float:
    """Requests waiting for the model, as the fcn_queue_depth gauge says."""
    return metric(metrics.render().decode(), "fcn_queue_depth")


async def queued(metrics: Metrics, count: int) -> None:
    while depth(metrics) < count:
        await asyncio.sleep(0.001)


async def test_requests_are_grouped_by_size_and_get_their_own_slice(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics) as batcher:
        first = await hold(batcher, gate, pattern(16, 16, seed=99))
        sizes = [(20, 30), (24, 16), (20, 30), (24, 16), (20, 30)]
        images = [pattern(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        tasks = [asyncio.ensure_future(submit(batcher, im, timeout_s=30)) for im in images]
        await queued(metrics, len(images))
        gate.open.set()
        results = await asyncio.gather(first, *tasks)
    # The held request alone, then the oldest size with its kind, then the other size.
    assert gate.shapes == [(1, 16, 16, 3), (3, 20, 30, 3), (2, 24, 16, 3)]
    for image, result in zip(images, results[1:], strict=True):
        alone = runtime.run(image[None])
        assert result.labels.shape == image.shape[:2]
        assert result.labels.tobytes() == alone["labels"][0].tobytes()
        assert result.confidence is not None  # the model has it: every slice carries its own
        if TEST_RUNTIME["runtime"] == "onnxruntime":
            assert result.confidence.tobytes() == alone["confidence"][0].tobytes()
        else:  # OpenVINO's exp and sums round per batch shape: one unit either way
            moved = result.confidence.astype(np.int16) - alone["confidence"][0]
            assert np.abs(moved).max() <= 1
    assert [r.batch_size for r in results] == [1, 3, 2, 3, 2, 3]


async def test_batches_hold_at_most_max_batch_size(runtime: Runtime, metrics: Metrics) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics, max_batch_size=2) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))
        tasks = [
            asyncio.ensure_future(submit(batcher, pattern(12, 12, seed=i), timeout_s=30))
            for i in range(5)
        ]
        await queued(metrics, 5)
        gate.open.set()
        await asyncio.gather(first, *tasks)
    assert [s[0] for s in gate.shapes] == [1, 2, 2, 1]


async def test_batches_hold_at_most_max_batch_pixels_counting_the_padding(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    # Room for two 12 x 12 images padded to 212 x 212, not three.
    async with started(gate, metrics, max_batch_pixels=int(2.5 * padded_pixels(12, 12))) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))
        tasks = [
            asyncio.ensure_future(submit(batcher, pattern(12, 12, seed=i), timeout_s=30))
            for i in range(5)
        ]
        await queued(metrics, 5)
        gate.open.set()
        await asyncio.gather(first, *tasks)
    assert [s[0] for s in gate.shapes] == [1, 2, 2, 1]


async def test_a_forming_batch_waits_only_for_requests_on_their_way(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    gate.open.set()
    async with started(gate, metrics, max_delay_s=5.0) as batcher:
        # Nothing announced: a lone request runs at once despite a 5 s delay.
        lone = await asyncio.wait_for(submit(batcher, pattern(10, 10), timeout_s=30), 2)
        assert lone.batch_size == 1

        async def arrive(seed: int, after_s: float) -> Prediction:
            with batcher.admit() as ticket:
                await asyncio.sleep(after_s)  # uploading and decoding
                image = pattern(10, 10, seed=seed)
                return await batcher.predict(ticket, image, timeout_s=30)

        results = await asyncio.gather(arrive(1, 0.0), arrive(2, 0.05), arrive(3, 0.1))
    assert [r.batch_size for r in results] == [3, 3, 3]


async def test_a_failing_batch_fails_only_its_requests(
    failing_model_path: Path, metrics: Metrics
) -> None:
    failing = runtime_of(failing_model_path)
    gate = Gate(failing.run)
    async with started(gate, metrics) as batcher:
        first = await hold(batcher, gate, np.full((4, 8, 3), 130, np.uint8))
        bad = [
            asyncio.ensure_future(submit(batcher, pattern(4, 5, seed=i), timeout_s=30))
            for i in range(2)
        ]
        good = asyncio.ensure_future(
            submit(batcher, np.full((3, 8, 3), 255, np.uint8), timeout_s=30)
        )
        await queued(metrics, 3)
        gate.open.set()
        outcomes = await asyncio.gather(first, *bad, good, return_exceptions=True)
        # The worker goes on after the failure.
        later = await submit(batcher, np.zeros((2, 8, 3), np.uint8), timeout_s=30)
    assert isinstance(outcomes[0], Prediction)
    np.testing.assert_array_equal(outcomes[0].labels, np.full((4, 8), 2))
    for outcome in outcomes[1:3]:
        assert isinstance(outcome, InferenceError)
        assert "batch of 2 image(s) of 5x4" in outcome.message
    assert outcomes[1] is not outcomes[2]
    assert isinstance(outcomes[3], Prediction)
    np.testing.assert_array_equal(outcomes[3].labels, np.full((3, 8), 3))
    np.testing.assert_array_equal(later.labels, np.zeros((2, 8)))
    assert metrics.batch_failures._value.get() == 1


async def test_admission_counts_every_request_until_it_is_answered(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics, max_queue=3) as batcher:
        # One running, one queued, one admitted but not yet queued (its upload still coming).
        first = await hold(batcher, gate, pattern(8, 8))
        waiting = asyncio.ensure_future(submit(batcher, pattern(8, 8), timeout_s=30))
        await queued(metrics, 1)
        with batcher.admit() as uploading:
            assert metric(metrics.render().decode(), "fcn_requests_admitted") == 3
            refused = pytest.raises(OverloadedError, match="3 requests are in the service")
            with refused as caught, batcher.admit():
                pass
            assert caught.value.headers == {"Retry-After": "2"}
            gate.open.set()
            await asyncio.gather(first, waiting)
            # Answered, the two gave their places back; the admitted one keeps its own and
            # is queued on it without a second check.
            with batcher.admit(), batcher.admit():
                later = await batcher.predict(uploading, pattern(8, 8), timeout_s=30)
        assert later.batch_size == 1
        with pytest.raises(RuntimeError, match="this ticket's request is over"):
            await batcher.predict(uploading, pattern(8, 8), timeout_s=30)
    assert metric(metrics.render().decode(), "fcn_requests_admitted") == 0


async def test_timed_out_requests_never_reach_the_model(runtime: Runtime, metrics: Metrics) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))
        with pytest.raises(RequestTimeoutError, match="no result within 0.05 s"):
            await submit(batcher, pattern(9, 9), timeout_s=0.05)
        gate.open.set()
        await first
        after = await submit(batcher, pattern(10, 10), timeout_s=30)
    assert after.batch_size == 1
    assert gate.shapes == [(1, 8, 8, 3), (1, 10, 10, 3)]
    assert metrics.dropped.labels("cancelled")._value.get() == 1


async def test_disconnected_clients_are_dropped(runtime: Runtime, metrics: Metrics) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))

        async def gone() -> bool:
            return True

        task = asyncio.ensure_future(
            submit(batcher, pattern(9, 9), timeout_s=30, disconnected=gone)
        )
        await queued(metrics, 1)
        gate.open.set()
        await first
        with pytest.raises(Exception, match="the client disconnected"):
            await task
    assert gate.shapes == [(1, 8, 8, 3)]


async def test_a_client_check_that_fails_counts_as_gone_and_loses_nothing(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    async with started(gate, metrics) as batcher:
        first = await hold(batcher, gate, pattern(8, 8))

        async def broken() -> bool:
            raise RuntimeError("the transport cannot tell")

        doomed = asyncio.ensure_future(
            submit(batcher, pattern(9, 9), timeout_s=30, disconnected=broken)
        )
        fine = asyncio.ensure_future(submit(batcher, pattern(9, 9, seed=1), timeout_s=30))
        await queued(metrics, 2)
        gate.open.set()
        await first
        with pytest.raises(ClientGoneError):
            await doomed
        assert (await fine).batch_size == 1
        assert depth(metrics) == 0
        # The service has all its places: as many requests as it holds still get in.
        gate.open.clear()
        gate.entered.clear()
        held = await hold(batcher, gate, pattern(8, 8))
        full = [
            asyncio.ensure_future(submit(batcher, pattern(8, 8), timeout_s=30)) for _ in range(15)
        ]
        await queued(metrics, 15)
        gate.open.set()
        await asyncio.gather(held, *full)


@pytest.mark.runtimes
async def test_a_batch_nobody_waits_for_any_more_is_aborted(
    model_path: Path, metrics: Metrics
) -> None:
    runtime = runtime_of(model_path)  # on each runtime: each stops a run its own way
    gate = Gate(runtime.run)
    gate.open.set()
    async with started(gate, metrics, abort=runtime.terminate) as batcher:
        # Hundreds of milliseconds of inference, abandoned as soon as it starts.
        big = np.zeros((2000, 2000, 3), np.uint8)
        task = asyncio.ensure_future(submit(batcher, big, timeout_s=30))
        while batcher.running_for() == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        while batcher.busy:
            await asyncio.sleep(0.001)
        assert metrics.batches_aborted._value.get() == 1
        assert metrics.batch_failures._value.get() == 0
        after = await submit(batcher, pattern(10, 10), timeout_s=30)
    assert after.labels.shape == (10, 10)


async def test_stop_finishes_queued_work_then_refuses(runtime: Runtime, metrics: Metrics) -> None:
    gate = Gate(runtime.run)
    batcher = Batcher(
        gate,
        max_batch_size=1,
        max_batch_pixels=10**9,
        max_delay_s=0,
        max_queue=8,
        retry_after_s=1,
        metrics=metrics,
    )
    batcher.start()
    first = await hold(batcher, gate, pattern(8, 8))
    rest = [asyncio.ensure_future(submit(batcher, pattern(8, 8), timeout_s=30)) for _ in range(3)]
    await queued(metrics, 3)
    stopping = asyncio.ensure_future(batcher.stop(30))
    await asyncio.sleep(0.01)
    with pytest.raises(NotReadyError, match="shutting down"):
        await submit(batcher, pattern(8, 8), timeout_s=30)
    gate.open.set()
    results = await asyncio.gather(first, *rest)
    await stopping
    assert len(results) == 4
    assert len(gate.shapes) == 4


async def test_stop_answers_a_batch_that_is_still_forming(
    runtime: Runtime, metrics: Metrics
) -> None:
    gate = Gate(runtime.run)
    gate.open.set()
    async with started(gate, metrics, max_batch_size=4, max_delay_s=30.0) as batcher:
        # A request still on its way to the queue keeps the batch waiting for it.
        with batcher.admit():
            task = asyncio.ensure_future(submit(batcher, pattern(8, 8), timeout_s=30))
            await asyncio.sleep(0.01)
            await batcher.stop(0.05)
        with pytest.raises(NotReadyError, match="shut down before the result"):
            await asyncio.wait_for(task, 5)
    assert gate.shapes == []


@pytest.mark.slow
async def test_a_full_service_is_503_with_retry_after_before_the_upload(
    model_path: Path, big_image: bytes
) -> None:
    png = encode(pattern(45, 61), "PNG")
    app = create_app(settings(model_path, max_queue=2, max_batch_size=1, retry_after_s=3))
    async with running(app) as client:
        blocker = await busy(client, big_image)  # running: it holds one of the two places
        waiting = asyncio.ensure_future(client.post("/segment", files={"image": ("a", png)}))
        await wait_metric(client, "fcn_queue_depth", 1)
        refused = await client.post("/segment", files={"image": ("a", png)})
        message = assert_error(refused, 503, "overloaded")["message"]
        assert message == "2 requests are in the service (the limit); retry later"
        assert refused.headers["retry-after"] == "3"
        # Refused before its upload is taken in.
        status, _, pulled = await asgi_post(app, [png], [(b"content-type", b"image/png")])
        assert (status, pulled) == (503, 0)
        assert (await blocker).status_code == 200
        assert (await waiting).status_code == 200
        assert metric(await scrape(client), "fcn_requests_admitted") == 0
