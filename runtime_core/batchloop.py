"""How requests reach a :class:`~runtime_core.inference.ModelHandler` in the process that runs it.

Two feeders, one measure of service time::

    host.py     one wake-up's frames, grouped by model --> run_wakeup --> run_groups --> handler.handle
    worker.py   INFER frames --> BatchLoop.submit --> deque --> BatchLoop.run --> run_envelopes
    (a dedicated worker, a Ray actor; pools/inprocess.py with parallel_workers 0, no socket)

:func:`run_groups` runs the groups one after another and stamps each outcome with its share
of the group's service time: wall time less the time the thread sat runnable waiting for a
CPU, so that a worker at low priority is not charged for being made to wait.
:func:`run_wakeup` runs them to the end from a host's blocking loop: stepped in place when
every runtime in the wake-up says ``predict_never_waits``, on the host's event loop from
the first wait otherwise.

:class:`BatchLoop` is fed one request at a time. The requests found waiting when it wakes
run as one batch, which the handler may merge into one ``predict`` call (coalescing, on by
default: it costs no waiting). With ``max_batch_time`` > 0 it also waits, at most that long
after the first request of a batch arrived, for up to ``max_batch_size`` requests (adaptive
batching); dedicated workers are built with no wait, because their pool holds batches in
the main process (:mod:`runtime_core.pools.batching`). A worker's loop also gives the kernel
scheduling points while a batch runs at ``SCHED_IDLE`` (:mod:`runtime_core.yieldpoints`).

Bounds: the deque is unbounded here, but the pool never sends a worker more than its
pipeline depth, so at most that many wait. A batch is at most ``max_batch_size`` requests,
or ``DEFAULT_COALESCE`` when the model sets none.

Ordering: outcomes come back in the order the requests were submitted, within a batch and
between batches.

Cancel: a cancelled future is left alone; its request still runs, and its outcome is dropped.

Timeout: a request whose deadline has passed is answered ``DeadlineExceeded`` by the
handler when its batch is decoded, without reaching the runtime.

Close (the model is unloaded, the worker's socket closed): the batch that runs finishes;
requests not started are answered "the model was unloaded" (``InferenceFailed``). Worker
death takes the loop with it; the main process answers for its requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import InferenceFailed
from runtime_core.inference import ModelHandler
from runtime_core.yieldpoints import YieldPoints

__all__ = ["DEFAULT_COALESCE", "BatchLoop", "run_envelopes", "run_groups", "run_wakeup"]

_T = TypeVar("_T")

#: Most requests merged by coalescing when the model sets no ``max_batch_size``.
DEFAULT_COALESCE = 32


#: Open schedstat files of this process's threads, by thread id (at most ``_SCHEDSTAT_FILES``).
#: Emptied in a forked child, whose inherited descriptors name its parent's threads.
_schedstat: dict[int, int] = {}
_SCHEDSTAT_FILES = 16
#: This thread's schedstat descriptor (``fd``): found without asking the kernel for the
#: thread's id (``gettid`` and ``getpid`` were two of the three system calls of every read,
#: issue 20).
_this_thread = threading.local()


def _forked() -> None:
    """In a forked child, which runs only the thread that forked: the inherited descriptors
    name the parent's threads (they stay open, a few, left alone)."""
    _schedstat.clear()
    _this_thread.__dict__.clear()


os.register_at_fork(after_in_child=_forked)


def _schedstat_fd() -> int | None:
    fd: int | None = getattr(_this_thread, "fd", None)
    if fd is not None:
        return fd
    tid = threading.get_native_id()
    fd = _schedstat.get(tid)
    if fd is None:
        if len(_schedstat) >= _SCHEDSTAT_FILES:  # threads came and went: no more kept open
            return None
        fd = _schedstat[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    _this_thread.fd = fd
    return fd


def _cpu_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat).

    Read once per group of requests, so it must be cheap: the file stays open and is read
    with ``pread``, rather than opened on every read (issue 9)."""
    try:
        fd = _schedstat_fd()
        if fd is None:
            with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
                return int(f.read().split()[1]) / 1e9
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return 0.0


async def run_envelopes(handler: ModelHandler, envelopes: list[Envelope]) -> list[Outcome]:
    """Decode each request on its own, run the decoded ones (merged where the runtime allows),
    and return one outcome per envelope, in order. Never raises."""
    return (await run_groups([(handler, envelopes)]))[0]


async def run_groups(
    groups: list[tuple[ModelHandler, list[Envelope]]],
    done: Callable[[int, list[Outcome]], None] | None = None,
) -> list[list[Outcome]]:
    """:func:`run_envelopes` for several models' requests at once (a host's wake-up): one
    outcome list per group, in order. ``done(i, outcomes)`` is called as each group
    finishes, so a host can answer it while the next group runs. Never raises."""
    results: list[list[Outcome]] = []
    waited = _cpu_wait()
    started = time.perf_counter()
    for i, (handler, envelopes) in enumerate(groups):
        outcomes = await handler.handle(envelopes, started)
        # Service time: wall time less the time this thread sat runnable waiting for a CPU,
        # so a worker at low priority is not charged for being made to wait. The wait read at
        # one group's end is the next one's start: one read of schedstat per group.
        ended, waited_now = time.perf_counter(), _cpu_wait()
        service = max(0.0, ended - started - (waited_now - waited)) / max(1, len(outcomes))
        waited = waited_now
        # The largest of its recent calls, decaying by a tenth a group: a model whose calls are
        # sometimes long is not taken for cheap after one short call (runtime_core.hostanswers).
        cost = handler.unit_cost * 0.9
        handler.unit_cost = service if service > cost or cost == math.inf else cost
        for outcome in outcomes:
            outcome.cpu = service
        results.append(outcomes)
        if done is not None:
            done(i, outcomes)
        started = time.perf_counter()  # what ``done`` took (a reply sent) is no group's service
    return results


def run_wakeup(
    loop: asyncio.AbstractEventLoop,
    groups: list[tuple[ModelHandler, list[Envelope]]],
    done: Callable[[int, list[Outcome]], None],
) -> list[list[Outcome]]:
    """:func:`run_groups` to its end, for a host's wake-up, in a thread where ``loop`` is not
    running. When every group's runtime says ``predict_never_waits``, without a turn of the
    loop: their requests run without suspending, yet a run of the loop (a task, its
    callbacks, a select) cost a host about 7 us per wake-up, as much as decoding a small
    request (issue 20)."""
    work = run_groups(groups, done)
    if all(handler.never_waits for handler, _ in groups):
        return _complete(loop, work)
    return loop.run_until_complete(work)


def _complete(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]) -> _T:
    """``loop.run_until_complete(coro)``, for a coroutine that usually never waits.

    The coroutine is first stepped here, with ``loop`` set as the running loop
    (``asyncio.get_running_loop()`` works inside it) in a context of its own; only when it
    waits on something (an async runtime's I/O, a sleep) does the loop take over, in a task
    in that same context, so context variables set before the wait (a trace's span) are
    found after it."""
    context = contextvars.copy_context()
    asyncio._set_running_loop(loop)
    try:
        waiting = context.run(coro.send, None)
    except StopIteration as finished:
        return cast(_T, finished.value)
    finally:
        asyncio._set_running_loop(None)
    return loop.run_until_complete(loop.create_task(_resume(coro, waiting), context=context))


async def _resume(coro: Coroutine[Any, Any, _T], waiting: Any) -> _T:
    """The rest of a coroutine that :func:`_complete` stepped until it first waited on
    ``waiting`` (a future, or ``None`` for a bare yield): what a task does, step by step."""
    while True:
        if waiting is None:
            await asyncio.sleep(0)
        else:
            waiting._asyncio_future_blocking = False
            await asyncio.wait([waiting])  # done, without taking its result or exception
        try:
            waiting = coro.send(None)  # the awaited future's result (or error) reaches coro here
        except StopIteration as finished:
            return cast(_T, finished.value)


class BatchLoop:
    """Feeds a :class:`ModelHandler` from submitted request bytes; see the module docstring.

    Bounded by the caller (the pool's pipeline depth). On close, requests not
    started are answered with an error; the one running finishes.
    """

    def __init__(
        self,
        handler: ModelHandler,
        max_batch_size: int = 0,
        max_batch_time: float = 0.0,
        yields: YieldPoints | None = None,
    ) -> None:
        self.handler = handler
        self.yields = yields
        self.limit = max_batch_size if max_batch_size > 1 else DEFAULT_COALESCE
        self.wait = max_batch_time if max_batch_size > 1 else 0.0
        self._pending: deque[tuple[asyncio.Future[Outcome], Envelope, float]] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((future, envelope, time.monotonic()))
        self._wakeup.set()
        return future

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        handler = self.handler
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and not self._closed:
                if self.wait and len(self._pending) < self.limit:
                    await self._fill()
                take = [self._pending.popleft() for _ in range(min(self.limit, len(self._pending)))]
                yields = self.yields if self.yields is not None and self.yields.arm() else None
                try:
                    outcomes = await run_envelopes(handler, [envelope for _, envelope, _ in take])
                finally:
                    if yields is not None:
                        yields.disarm()
                for (future, _, _), outcome in zip(take, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_result(Outcome(code=InferenceFailed.code, body=b"the model was unloaded"))

    async def _fill(self) -> None:
        """Wait until ``limit`` requests are pending or the oldest has waited ``wait`` seconds."""
        until = self._pending[0][2] + self.wait
        while len(self._pending) < self.limit and not self._closed:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
