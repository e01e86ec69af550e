"""Long pure-Python work that the event loop must not wait for all at once.

At many thousand models, a scan of the repository folder, the fingerprints the watcher
compares and the repository index each take tens to hundreds of milliseconds of Python.
Run in one go on the event loop, that long a pause holds every request in flight (issue
23). Such work is written as a generator of *steps*: it yields after about
``STEP_SECONDS`` of work and returns its result. :func:`run_steps` runs it to the end at
once (start-up, before the loop runs); :func:`run_steps_async` gives the loop a turn after
each step.

Bounded: a step is about ``STEP_SECONDS`` plus one item. On cancel, the generator is closed
where it stands (its ``finally`` blocks run); the work holds no lock and leaves no partial
state behind but what each step wrote whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar, cast

__all__ = ["STEP_SECONDS", "Stepper", "Steps", "run_steps", "run_steps_async"]

#: Seconds of work between two turns of the event loop.
STEP_SECONDS = 0.001

_T = TypeVar("_T")

#: Work as steps: a generator that yields between steps and returns the result.
Steps = Generator[None, None, _T]


class Stepper:
    """Tells a loop of many items when a step's time is up: ``if stepper.due(): yield``."""

    __slots__ = ("_mark",)

    def __init__(self) -> None:
        self._mark = time.perf_counter()

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self._mark < STEP_SECONDS:
            return False
        self._mark = now
        return True


def run_steps(steps: Steps[_T]) -> _T:
    """Run ``steps`` to the end at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(_T, done.value)


async def run_steps_async(steps: Steps[_T]) -> _T:
    """Run ``steps`` with a turn of the event loop after each."""
    try:
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return cast(_T, done.value)
            await asyncio.sleep(0)
    finally:
        steps.close()
