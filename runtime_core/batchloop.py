"""How requests reach a :class:`~runtime_core.inference.ModelHandler` in the process that runs it.

Two feeders, one measure of service time::

    host.py     one wake-up's frames, grouped by model --> run_groups --> handler.handle
    worker.py   INFER frames --> BatchLoop.submit --> deque --> BatchLoop.run --> run_envelopes
    (a dedicated worker, a Ray actor; pools/inprocess.py with parallel_workers 0, no socket)

:func:`run_groups` runs the groups one after another and stamps each outcome with its share
of the group's service time: wall time less the time the thread sat runnable waiting for a
CPU, so that a worker at low priority is not charged for being made to wait.

:class:`BatchLoop` is fed one request at a time. The requests found waiting when it wakes
run as one batch, which the handler may merge into one ``predict`` call (coalescing, on by
default: it costs no waiting). With ``max_batch_time`` > 0 it also waits, at most that long
after the first request of a batch arrived, for up to ``max_batch_size`` requests (adaptive
batching); dedicated workers are built with no wait, because their pool holds batches in
the main process (:mod:`runtime_core.pools.batching`).

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
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import InferenceFailed
from runtime_core.inference import ModelHandler

__all__ = ["DEFAULT_COALESCE", "BatchLoop", "run_envelopes", "run_groups"]

#: Most requests merged by coalescing when the model sets no ``max_batch_size``.
DEFAULT_COALESCE = 32


#: Open schedstat files of this process's threads, by thread id (at most ``_SCHEDSTAT_FILES``),
#: and the process they were opened in (a forked child inherits the descriptors, which name
#: its parent's threads).
_schedstat: dict[int, int] = {}
_schedstat_pid = 0
_SCHEDSTAT_FILES = 16


def _cpu_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat).

    Read twice per batch, so it must be cheap: the file stays open and is read with
    ``pread``, rather than opened on every read (issue 9)."""
    global _schedstat_pid
    try:
        if _schedstat_pid != os.getpid():  # forked: the inherited descriptors are left alone
            _schedstat.clear()
            _schedstat_pid = os.getpid()
        tid = threading.get_native_id()
        fd = _schedstat.get(tid)
        if fd is None:
            path = f"/proc/self/task/{tid}/schedstat"
            if len(_schedstat) >= _SCHEDSTAT_FILES:  # threads came and went: no more kept open
                with open(path, "rb") as f:
                    return int(f.read().split()[1]) / 1e9
            fd = _schedstat[tid] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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
    for i, (handler, envelopes) in enumerate(groups):
        waited = _cpu_wait()
        started = time.perf_counter()
        outcomes = await handler.handle(envelopes, started)
        wall = time.perf_counter() - started
        # Service time: wall time less the time this thread sat runnable waiting for a CPU,
        # so a worker at low priority is not charged for being made to wait.
        service = max(0.0, wall - (_cpu_wait() - waited)) / max(1, len(outcomes))
        for outcome in outcomes:
            outcome.cpu = service
        results.append(outcomes)
        if done is not None:
            done(i, outcomes)
    return results


class BatchLoop:
    """Feeds a :class:`ModelHandler` from submitted request bytes; see the module docstring.

    Bounded by the caller (the pool's pipeline depth). On close, requests not
    started are answered with an error; the one running finishes.
    """

    def __init__(self, handler: ModelHandler, max_batch_size: int = 0, max_batch_time: float = 0.0) -> None:
        self.handler = handler
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
                outcomes = await run_envelopes(handler, [envelope for _, envelope, _ in take])
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
