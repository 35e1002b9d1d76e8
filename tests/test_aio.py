"""agent/aio.py: run_to_end, against the cancellation-swallowing close that aioice has."""

from __future__ import annotations

import asyncio

import pytest

from agent.aio import run_to_end


async def _close_like_aioice(steps: list[str]) -> str:
    """The shape of aioice's ``Connection.close()``: cancel a helper task, await it, and
    catch the CancelledError (which then also hides a cancellation of the caller)."""
    helper = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    helper.cancel()
    try:
        await helper
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.01)
    steps.append("closed")
    return "done"


async def _cancel_during_close(use_helper: bool) -> tuple[asyncio.Task[str], list[str]]:
    steps: list[str] = []
    after: list[str] = []

    async def caller() -> str:
        if use_helper:
            await run_to_end(_close_like_aioice(steps))
        else:
            await _close_like_aioice(steps)
        after.append("carried on")  # what a swallowed cancellation lets happen
        await asyncio.sleep(0.05)
        return "finished"

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the close started its helper
    await asyncio.sleep(0)  # … and is awaiting the cancelled helper
    task.cancel()
    await asyncio.wait([task], timeout=2)
    return task, steps + after


async def test_the_hazard_is_real_without_the_helper() -> None:
    """Guards the test below: a bare await of such a close loses the cancellation."""
    task, steps = await _cancel_during_close(use_helper=False)
    assert task.done() and not task.cancelled()
    assert steps == ["closed", "carried on"]


async def test_run_to_end_finishes_the_close_then_delivers_the_cancellation() -> None:
    task, steps = await _cancel_during_close(use_helper=True)
    assert task.cancelled()
    assert steps == ["closed"]  # the close ran to its end; the caller did not carry on


async def test_run_to_end_returns_the_result_and_raises_the_error() -> None:
    async def ok() -> int:
        await asyncio.sleep(0)
        return 7

    async def bad() -> None:
        await asyncio.sleep(0)
        raise ValueError("close failed")

    assert await run_to_end(ok()) == 7
    with pytest.raises(ValueError, match="close failed"):
        await run_to_end(bad())
