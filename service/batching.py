"""The batcher: admission, a bounded queue of decoded images, and batches of one H x W.

A request takes a ``Ticket`` (one of ``max_queue`` places, ``service.admission``) before its
upload is read and holds it until it is answered, so a burst is refused before its bodies come
in. One worker task forms each batch on the event loop (same H x W, at most ``max_batch_size``
images and ``max_batch_pixels`` padded pixels, waiting at most ``max_delay_s`` and only while
admitted requests are still on their way to the queue) and runs it on a dedicated inference
thread, one batch at a time. Every request owns a future: it gets its slice of the batch's labels,
or the batch's error, and nothing else. When every request of the running batch has given
up, the run is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract.schema import CONFIDENCE, GEOMETRY, LABELS
from contract.tiling import padded_pixels
from service.admission import Places
from service.errors import ClientGoneError, InferenceError, NotReadyError, RequestTimeoutError
from service.metrics import Metrics
from service.prediction import Outputs, Predict, Prediction

logger = logging.getLogger("fcn.service")

Disconnected = Callable[[], Awaitable[bool]]
# Asks the running predict call to stop early (it then raises); whether one was running.
Abort = Callable[[], bool]


@dataclass(eq=False)
class Ticket:
    """A request's place in the service, from ``Batcher.admit()`` until it is answered."""

    incoming: bool = True  # its image has not reached the queue yet
    active: bool = True  # inside its admit() block
    uploading: bool = True  # its body is still coming in (Batcher.received() ends it)


@dataclass(eq=False)
class _Request:
    image: NDArray[np.uint8]  # H, W, 3
    future: asyncio.Future[Prediction]
    enqueued: float  # loop.time()
    disconnected: Disconnected | None


class Batcher:
    """Queue, group and run requests; ``start()`` and ``stop()`` inside a running loop."""

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int,
        max_batch_pixels: int,
        max_delay_s: float,
        max_queue: int,
        retry_after_s: int,
        metrics: Metrics,
        abort: Abort | None = None,
    ):
        self.max_batch_size = max_batch_size
        self.max_batch_pixels = max_batch_pixels
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._predict = predict
        self._abort = abort
        self._metrics = metrics
        self.places = Places(max_queue, retry_after_s=retry_after_s, metrics=metrics)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._held: deque[_Request] = deque()  # taken from the queue, other H x W: next batches
        self._forming: list[_Request] = []  # the batch being collected
        self._running: list[_Request] = []
        self._started = 0.0  # time.monotonic() when the running batch started
        self._aborted = False  # the running batch was asked to stop
        self._waiting = 0  # submitted, not yet running or dropped
        self._incoming = 0  # admitted, not yet submitted (uploading or decoding)
        self._answering = 0  # admitted, first image queued, not yet answered
        self._closed = False  # refusing new requests (draining)
        self._stopped = False  # the worker is gone: nothing more is run
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcn-inference")

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or running, or has more images to come (the
        next tiles of a tiled request)."""
        return self._waiting > 0 or bool(self._running) or self._answering > 0

    def running_for(self) -> float:
        """Seconds the running batch has been running (0 when none runs)."""
        return time.monotonic() - self._started if self._running else 0.0

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="fcn-batcher")

    def call(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        """Run ``fn`` on the inference thread (warm-up uses it, so nothing runs beside it)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError("the service is shutting down", headers={"Retry-After": "0"})

    @contextlib.contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Take one of the ``max_queue`` places now (503 when all are taken) for the ``with``
        block: from before the upload is read until the request is answered. Until its image
        is queued, a forming batch may wait for it."""
        self._check_open()
        self.places.take()
        with self._ticket() as ticket:
            yield ticket

    @contextlib.asynccontextmanager
    async def admit_waiting(self, wait_s: float) -> AsyncIterator[Ticket]:
        """``admit()``, waiting up to ``wait_s`` in line for a place while uploads hold some
        (``service.admission`` says why)."""
        self._check_open()
        await self.places.wait(wait_s)
        with self._ticket() as ticket:
            yield ticket

    @contextlib.contextmanager
    def _ticket(self) -> Iterator[Ticket]:
        """The ticket of a place just taken, given back when the block ends."""
        ticket = Ticket()
        self._incoming += 1
        try:
            yield ticket
        finally:
            ticket.active = False
            self.places.release(uploading=ticket.uploading)
            if ticket.incoming:
                self._incoming -= 1
            else:
                self._answering -= 1

    def received(self, ticket: Ticket) -> None:
        """The body of ``ticket``'s request is in: its place is held, no longer reserved."""
        if ticket.uploading:
            ticket.uploading = False
            self.places.received()

    async def predict(
        self,
        ticket: Ticket,
        image: NDArray[np.uint8],
        *,
        timeout_s: float,
        disconnected: Disconnected | None = None,
    ) -> Prediction:
        """Queue ``image`` (H x W x 3) in the place ``ticket`` holds and wait for its labels,
        at most ``timeout_s``; there is no second refusal for room.

        A request of several images (tiles, a protocol batch) queues them through one ticket,
        a batch's worth at a time (``service.fanout``), so that requests arriving meanwhile are
        queued ahead of its next images.
        """
        if not ticket.active:
            raise RuntimeError("this ticket's request is over; admit() another")
        if ticket.incoming:
            self._check_open()  # a draining service finishes what it began, takes nothing new
            ticket.incoming = False
            self._incoming -= 1
            self._answering += 1
        elif self._stopped:
            raise NotReadyError("the service shut down before the result")
        loop = asyncio.get_running_loop()
        request = _Request(image, loop.create_future(), loop.time(), disconnected)
        self._queue.put_nowait(request)
        self._count_waiting(+1)
        try:
            async with asyncio.timeout(timeout_s):
                # Cancelling this wait (timeout, client gone) cancels the future, so the
                # worker drops the request if it has not reached the model yet.
                return await request.future
        except TimeoutError:
            raise RequestTimeoutError(
                f"no result within {timeout_s:g} s; the service is busy"
            ) from None

    async def stop(self, timeout_s: float) -> None:
        """Refuse new requests, let queued and running ones finish for ``timeout_s``, stop.

        What is left then fails with 503 and a running batch is aborted.
        """
        self._closed = True
        self.places.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.busy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._stopped = True
        leftovers = [*self._running, *self._forming, *self._held]
        if self._running and self._abort is not None:
            self._aborted = self._abort()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        self._fail(leftovers, lambda: NotReadyError("the service shut down before the result"))
        self._held.clear()
        self._forming = []
        self._running = []
        self._count_waiting(-self._waiting)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _fail(requests: list[_Request], error: Callable[[], Exception]) -> None:
        """Fail the requests not answered yet, each with its own ``error()``."""
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error())

    def _count_waiting(self, delta: int) -> None:
        self._waiting += delta
        self._metrics.queue_depth.set(self._waiting)

    async def _gone(self, request: _Request) -> bool:
        """Whether the client left; a transport that cannot tell counts as gone."""
        if request.disconnected is None:
            return False
        try:
            return await request.disconnected()
        except Exception:
            logger.warning("cannot tell whether a client is still there; dropping its request")
            return True

    async def _alive(self, request: _Request) -> bool:
        """False (and the request dropped) when its caller timed out or its client left."""
        reason = None
        if request.future.done():
            reason = "cancelled"
        elif await self._gone(request):
            reason = "disconnected"
            if not request.future.done():
                request.future.set_exception(ClientGoneError("the client disconnected"))
        if reason is None:
            return True
        self._count_waiting(-1)
        self._metrics.dropped.labels(reason).inc()
        return False

    async def _next(self) -> _Request:
        while True:
            request = self._held.popleft() if self._held else await self._queue.get()
            if await self._alive(request):
                return request

    def batch_limit(self, shape: tuple[int, ...]) -> int:
        """Most requests of image ``shape`` in one batch: by count, then by padded pixels."""
        by_pixels = self.max_batch_pixels // padded_pixels(shape[0], shape[1])
        return max(1, min(self.max_batch_size, by_pixels))

    async def _collect(self) -> list[_Request]:
        """The oldest live request and more of its H x W, within the batch limits.

        The batch forms in ``self._forming``, so that an error or a stop meanwhile can still
        answer every request in it.
        """
        loop = asyncio.get_running_loop()
        first = await self._next()
        batch = self._forming = [first]
        shape = first.image.shape
        limit = self.batch_limit(shape)
        for request in [r for r in self._held if r.image.shape == shape]:
            if len(batch) >= limit:
                break
            self._held.remove(request)
            if await self._alive(request):
                batch.append(request)
        deadline = first.enqueued + self.max_delay_s
        while len(batch) < limit:
            if self._queue.empty():
                # Wait only for admitted requests on their way to the queue, never idly.
                remaining = deadline - loop.time()
                if remaining <= 0 or self._incoming == 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                request = self._queue.get_nowait()
            if request.image.shape != shape:
                self._held.append(request)
            elif await self._alive(request):
                batch.append(request)
        self._forming = []
        return batch

    def _run_batch(self, images: list[NDArray[np.uint8]]) -> tuple[Outputs, float]:
        """On the inference thread: stack, run, check the shapes; returns outputs and seconds."""
        # [N, H, W, 3]; a tile is a view of its image, made contiguous here, off the loop.
        batch = np.ascontiguousarray(images[0][None]) if len(images) == 1 else np.stack(images)
        start = time.perf_counter()
        outputs = self._predict(batch)
        seconds = time.perf_counter() - start
        for name, values in outputs.items():
            if values.shape != batch.shape[:3]:
                raise RuntimeError(f"{name} of shape {values.shape} for images {batch.shape}")
        return outputs, seconds

    def _abandoned(self, batch: list[_Request]) -> None:
        """Abort the running ``batch`` once none of its requests waits for it any more."""
        if self._running is not batch or self._aborted:
            return
        if all(r.future.done() for r in batch) and self._abort is not None:
            self._aborted = self._abort()

    async def _execute(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        self._running = batch
        self._aborted = False
        self._count_waiting(-len(batch))
        self._metrics.batch_size.observe(len(batch))
        self._metrics.batches_running.inc()
        started = loop.time()
        self._started = time.monotonic()

        def given_up(_: asyncio.Future[Prediction]) -> None:
            self._abandoned(batch)

        for request in batch:
            request.future.add_done_callback(given_up)
        try:
            outputs, seconds = await loop.run_in_executor(
                self._executor, self._run_batch, [r.image for r in batch]
            )
        except Exception as exc:
            height, width = batch[0].image.shape[:2]
            if self._aborted:
                logger.warning(
                    "aborted a batch of %d at %dx%d: every request gave up on it",
                    len(batch),
                    height,
                    width,
                )
                self._metrics.batches_aborted.inc()
                self._fail(batch, lambda: NotReadyError("the batch was aborted"))
                return
            logger.exception(
                "inference failed on a batch of %d at %dx%d", len(batch), height, width
            )
            self._metrics.batch_failures.inc()
            detail = (str(exc).strip().splitlines() or [""])[0][:300]
            message = (
                f"inference failed on this batch of {len(batch)} image(s) of {width}x{height}: "
                f"{type(exc).__name__}: {detail}"
            )
            self._fail(batch, lambda: InferenceError(message))
            return
        finally:
            self._metrics.batches_running.dec()
            self._running = []
        self._metrics.busy_seconds.inc(seconds)
        labels, confidence = outputs[LABELS], outputs.get(CONFIDENCE)
        geometry = outputs.get(GEOMETRY)
        for i, request in enumerate(batch):
            if not request.future.done():
                sure = None if confidence is None else confidence[i]
                second = None if geometry is None else geometry[i]
                waited = started - request.enqueued
                request.future.set_result(
                    Prediction(labels[i], waited, seconds, len(batch), sure, second)
                )

    async def _work(self) -> None:
        while True:
            try:
                batch = await self._collect()
                await self._execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the service, nor lose requests
                logger.exception("batcher error")
                forming, self._forming = self._forming, []
                self._count_waiting(-len(forming))
                self._fail(
                    forming, lambda: InferenceError("the service failed to schedule this image")
                )
