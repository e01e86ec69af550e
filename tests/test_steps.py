"""Work split into steps (runtime_core.steps): the repository's scans and index at many
thousand models give the event loop a turn between steps instead of holding it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from runtime_core.steps import Steps, run_steps, run_steps_async


def _counting(seen: list[int], ticks: list[int], steps: int, closed: list[bool]) -> Steps[int]:
    try:
        for _ in range(steps):
            seen.append(ticks[0])
            yield
        return sum(seen)
    finally:
        closed.append(True)


def test_steps_run_at_once_return_their_result() -> None:
    seen: list[int] = []
    closed: list[bool] = []
    assert run_steps(_counting(seen, [7], 3, closed)) == 21
    assert seen == [7, 7, 7]
    assert closed == [True]


def test_the_event_loop_runs_other_work_between_steps() -> None:
    asyncio.run(_other_work_between_steps())


async def _other_work_between_steps() -> None:
    ticks = [0]
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    seen: list[int] = []
    closed: list[bool] = []
    result = await run_steps_async(_counting(seen, ticks, 5, closed))
    stop.set()
    await other
    assert result == sum(seen)
    # Every step saw the other task move on since the step before it.
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert closed == [True]


def test_cancelling_stepped_work_closes_it_where_it_stands() -> None:
    asyncio.run(_cancelled())


async def _cancelled() -> None:
    seen: list[int] = []
    closed: list[bool] = []
    task = asyncio.ensure_future(run_steps_async(_counting(seen, [0], 1000, closed)))
    while len(seen) < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= len(seen) < 1000
    assert closed == [True]
