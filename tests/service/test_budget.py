"""The image-work budget: how many decodes and encodes run at once and how many pixels they
hold, first come first served, and nothing lost when a waiter gives up."""

from __future__ import annotations

import asyncio

import pytest

from service.budget import PixelBudget

pytestmark = pytest.mark.anyio


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def assert_free(budget: PixelBudget) -> None:
    """Every slot and every pixel can be taken at once: nothing is held."""
    async with asyncio.timeout(1):
        for _ in range(budget.slots):
            await budget.acquire(budget.pixels // budget.slots)
    for _ in range(budget.slots):
        budget.release(budget.pixels // budget.slots)


async def test_pixels_and_slots_bound_the_work_at_once() -> None:
    budget = PixelBudget(pixels=100, slots=3)
    order: list[str] = []
    release: dict[str, asyncio.Event] = {}

    async def work(name: str, pixels: int) -> None:
        release[name] = asyncio.Event()
        await budget.acquire(pixels)
        try:
            order.append(name)
            await release[name].wait()
        finally:
            budget.release(pixels)

    tasks = {name: asyncio.ensure_future(work(name, px)) for name, px in
             [("a", 60), ("b", 40), ("c", 30), ("d", 5)]}  # fmt: skip
    await settle()
    # a and b fill the 100 pixels; c waits, and d waits behind it (first come, first served).
    assert order == ["a", "b"]
    release["a"].set()
    await settle()
    assert order == ["a", "b", "c", "d"]
    # b, c and d fill the three slots: even a request for no pixels waits.
    fourth = asyncio.ensure_future(budget.acquire(0))
    await settle()
    assert not fourth.done()
    for name in "bcd":
        release[name].set()
    await asyncio.gather(*tasks.values(), fourth)
    budget.release(0)
    await assert_free(budget)


async def test_an_image_larger_than_the_budget_runs_alone() -> None:
    budget = PixelBudget(pixels=100, slots=4)
    await budget.acquire(500)
    waiting = asyncio.ensure_future(budget.acquire(1))
    await settle()
    assert not waiting.done()
    budget.release(500)
    await waiting
    budget.release(1)
    await assert_free(budget)


async def test_a_waiter_that_gives_up_leaves_nothing_behind() -> None:
    budget = PixelBudget(pixels=100, slots=4)
    await budget.acquire(90)
    big = asyncio.ensure_future(budget.acquire(50))
    small = asyncio.ensure_future(budget.acquire(5))
    await settle()
    assert not big.done()
    assert not small.done()  # it would fit, but queues behind the big one
    big.cancel()
    await settle()
    assert small.done()  # the head gave up: the next one that fits goes
    budget.release(5)
    budget.release(90)
    await assert_free(budget)  # the full budget is there again
