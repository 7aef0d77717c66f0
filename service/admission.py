"""Admission: the FCN_MAX_QUEUE places of the service, each reserved while its request's body
comes in and held once the body is in, and the short line of requests waiting for a place.

Why a line, and why only while uploads hold places: an upload ends within
FCN_UPLOAD_TIMEOUT_S (its body is in, or it is cut off with 408), so a place that an upload
reserves is free or held by a complete request within that time. A request that finds every
place taken while some are still uploading therefore waits for one (at most that long and a
second more, and at most FCN_MAX_QUEUE of them), rather than being refused: slow uploads then
delay the requests whose bodies are complete by one upload timeout at most, and never lock
them out.
A service whose places are all held by complete requests is really full, and refuses at once
(503), before it reads the body, as a burst should be. Places freed go to the line first, in
order of arrival.
"""

from __future__ import annotations

import asyncio
from collections import deque

from service.errors import NotReadyError, OverloadedError
from service.metrics import Metrics


class Places:
    """``size`` places: taken now (``take``) or after a wait in line (``wait``), then
    ``received`` once the body is in, and ``release``d when the request is answered."""

    def __init__(self, size: int, *, retry_after_s: int, metrics: Metrics):
        self.size = size
        self.taken = 0
        self.uploading = 0  # taken, the body still coming in
        self._line: deque[asyncio.Future[None]] = deque()
        self._retry_after = str(retry_after_s)
        self._metrics = metrics

    def _refusal(self, why: str = "") -> OverloadedError:
        return OverloadedError(
            f"{why}{self.taken} requests are in the service (the limit); retry later",
            headers={"Retry-After": self._retry_after},
        )

    def _count(self) -> None:
        self._metrics.admitted.set(self.taken)
        self._metrics.uploading.set(self.uploading)
        self._metrics.awaiting_place.set(sum(not f.done() for f in self._line))

    def take(self) -> None:
        """Take a free place now; 503 when none is free."""
        if self.taken >= self.size:
            raise self._refusal()
        self.taken += 1
        self.uploading += 1
        self._count()

    async def wait(self, timeout_s: float) -> None:
        """Take a place, waiting for it at most ``timeout_s`` in line while uploads hold some;
        503 at once when every place is held by a complete request or the line is full."""
        waiting = sum(not f.done() for f in self._line)
        if self.taken < self.size and not waiting:
            self.take()
            return
        if self.uploading == 0 or waiting >= self.size:
            raise self._refusal()
        granted = asyncio.get_running_loop().create_future()
        self._line.append(granted)
        self._count()
        try:
            async with asyncio.timeout(timeout_s):
                await granted  # release() hands its place over: counted as taken already
        except BaseException as exc:
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self.release(uploading=True)  # handed a place, but gone before taking it
            if isinstance(exc, TimeoutError):
                raise self._refusal(f"no place came free within {timeout_s:g} s: ") from None
            raise
        finally:
            if granted in self._line:
                self._line.remove(granted)
            self._count()

    def received(self) -> None:
        """A body is in: its place is held, no longer reserved."""
        self.uploading -= 1
        self._count()

    def release(self, *, uploading: bool) -> None:
        """Give a place back (``uploading``: its body never came in); the first request in
        line gets it."""
        if uploading:
            self.uploading -= 1
        while self._line:
            granted = self._line.popleft()
            if not granted.done():
                self.uploading += 1  # the waiter's upload begins in this place
                granted.set_result(None)
                break
        else:
            self.taken -= 1
        self._count()

    def close(self) -> None:
        """Turn the line away: the service is shutting down (503)."""
        for granted in self._line:
            if not granted.done():
                granted.set_exception(
                    NotReadyError("the service is shutting down", headers={"Retry-After": "0"})
                )
        self._count()
