"""The budget of image work on the CPU: how many decodes and encodes run at once, and how
many pixels they hold together, so that many large images at once cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
from collections import deque


class PixelBudget:
    """At most ``slots`` holders at once, holding at most ``pixels`` together (one holder may
    exceed it alone); first come, first served, so a large image is never starved."""

    def __init__(self, pixels: int, slots: int):
        self.pixels = pixels
        self.slots = slots
        self._used = 0
        self._holders = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, pixels: int) -> bool:
        if self._holders >= self.slots:
            return False
        return self._holders == 0 or self._used + pixels <= self.pixels

    def _take(self, pixels: int) -> None:
        self._used += pixels
        self._holders += 1

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            pixels, granted = self._waiters.popleft()
            self._take(pixels)
            granted.set_result(None)

    async def acquire(self, pixels: int) -> None:
        """Wait until ``pixels`` fit in the budget, then hold them."""
        if not self._waiters and self._fits(pixels):
            self._take(pixels)
            return
        entry = (pixels, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self.release(pixels)  # granted just as the wait was cancelled
            else:
                self._waiters.remove(entry)
                self._wake()  # a smaller request behind this one may fit now
            raise

    def release(self, pixels: int) -> None:
        """Give back what ``acquire(pixels)`` took."""
        self._used -= pixels
        self._holders -= 1
        self._wake()
