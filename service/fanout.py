"""Several images of one request (a tiled image's tiles, a protocol batch) through the batcher:
one ticket, one deadline, a batch's worth at a time, so that requests arriving meanwhile are
queued ahead of its next images. Every caller goes through ``predict_batches``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import numpy as np
from numpy.typing import NDArray

from service.batching import Batcher, Disconnected, Ticket
from service.errors import RequestTimeoutError
from service.prediction import Prediction


async def predict_batches(
    batcher: Batcher,
    ticket: Ticket,
    images: Sequence[NDArray[np.uint8]],
    *,
    deadline: float,
    timeout_s: float,
    disconnected: Disconnected | None = None,
) -> AsyncGenerator[list[Prediction]]:
    """The predictions of ``images`` (H x W x 3, all of one H x W) in order, one list per batch
    the batcher can take, in the place ``ticket`` holds.

    All are due by ``deadline`` (the loop's clock); past it, 504 with the one message, which
    names ``timeout_s`` (FCN_REQUEST_TIMEOUT_S). When one image fails, the rest are cancelled
    and its error is raised.
    """
    if not images:
        return
    loop = asyncio.get_running_loop()

    async def predict(image: NDArray[np.uint8]) -> Prediction:
        remaining = deadline - loop.time()
        if remaining <= 0:  # never queue an image that is already late
            raise RequestTimeoutError.after(timeout_s)
        try:
            return await batcher.predict(
                ticket, image, timeout_s=remaining, disconnected=disconnected
            )
        except RequestTimeoutError:
            raise RequestTimeoutError.after(timeout_s) from None

    group = batcher.batch_limit(images[0].shape[:2])
    for start in range(0, len(images), group):
        runs = [asyncio.ensure_future(predict(image)) for image in images[start : start + group]]
        try:
            predictions = await asyncio.gather(*runs)
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        yield predictions
