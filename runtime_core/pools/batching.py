"""Adaptive batching in the main process: held requests, one holder, one release rule.

Adaptive batching (``max_batch_size`` > 1 and ``max_batch_time`` > 0) is decided where every
worker's load is known. A request is added to the holder; it leaves for a worker when one has
room for it, by one rule (:func:`room`)::

    add(pending) ──> held ──┬─ room(workers) names a worker ──> up to size, to that worker
                            ├─ size held ──────────────────────> a full batch, to the least busy
                            └─ max_batch_time after the oldest ─> what is held, to the least busy
    on_room()  (a request done, a worker ready) ──> as the first branch

So waiting for a batch never leaves a worker idle, and a held batch is bound to a worker only
when one frees up (issue 9). Cheap requests (those the dispatch policy packs) go where
coalescing alone would send them, so for them batching on and off dispatch alike.

Bounds: at most what the pool's ``capacity`` let in is held. Ordering: first in, first out.
Cancel: a cancelled request (its future done) is dropped when its batch leaves, and never
reaches a worker (``settled``). No worker left: ``send`` gets None and the pool dispatches the
request as any other (to its host, or a clean failure). Close: :meth:`take_all`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from runtime_core.pools.connection import Pending
from runtime_core.pools.dispatch import BATCH_DEPTH, Target

W = TypeVar("W", bound=Target)


def room(ready: Sequence[W], cheap: bool, cores: int) -> W | None:
    """The worker to take held requests now, or None to keep holding them.

    Cheap requests (the measured compute per request is under ``PACK_BELOW``: those the
    dispatch policy packs): the busiest ready worker with fewer than ``BATCH_DEPTH`` in
    flight, exactly where coalescing alone would send them, so that they run in that
    worker's next call; once every worker is that full, they wait in the scheduler's queue
    (the pool's ``capacity``), as with batching off. Sending cheap requests only to the
    first ``cores`` workers, idle ones first, held many of them here while the other
    workers idled; idle workers first among all of them split the batches into smaller
    calls instead, each paying the per-call cost (measured in ``docs/benchmarks.md``,
    "Adaptive batching").

    Costlier requests, and those of unknown cost (none has finished yet): an idle worker
    among the first ``cores`` ready ones (at least two), so that one slow request never
    holds them up while another worker frees. More workers than cores cannot run at once,
    and waking them for a request each only splits the batches (4 workers on 2 cores:
    0.49 ms of CPU per request instead of 0.38)."""
    if not cheap:
        first = ready[: max(2, cores)]
        return next((c for c in first if not c.load and not c.overdue), None)
    best: W | None = None
    for c in ready:
        load = c.load
        if load < BATCH_DEPTH and not c.overdue and (best is None or load > best.load):
            best = c
    return best


def least_busy(ready: Sequence[W]) -> W | None:
    """Where a full or expired batch waits: the least busy worker, not overdue first."""
    return min(ready, key=lambda c: (c.overdue, c.load, c.index), default=None)


class BatchHolder(Generic[W]):
    """Requests held for one model's next batches (see the module docstring).

    ``ready()``: the model's ready workers; ``cheap()``: whether its requests are measured as
    cheap; ``send(pending, worker)``: send a request to ``worker`` (None: no worker is left);
    ``settled(pending)``: a held request was cancelled."""

    def __init__(
        self,
        size: int,
        wait: float,
        cores: int,
        *,
        ready: Callable[[], Sequence[W]],
        cheap: Callable[[], bool],
        send: Callable[[Pending, W | None], None],
        settled: Callable[[Pending], None],
    ) -> None:
        self.size = size
        self.wait = wait
        self.cores = cores
        self._ready = ready
        self._cheap = cheap
        self._send = send
        self._settled = settled
        self.held: list[Pending] = []
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.held)

    def room(self) -> W | None:
        """The worker with room for held requests now (:func:`room`), if any."""
        return room(self._ready(), self._cheap(), self.cores)

    def add(self, pending: Pending) -> None:
        """Hold ``pending``; send a batch at once if a worker has room or the batch is full."""
        self.held.append(pending)
        worker = self.room()
        if worker is not None:
            self._release(worker)
        elif len(self.held) >= self.size:
            self._release(None)
        else:
            self._arm()

    def on_room(self) -> None:
        """A worker may have room again (a request done, a worker ready): send to it."""
        if self.held and (worker := self.room()) is not None:
            self._release(worker)

    def expire(self) -> None:
        """``max_batch_time`` passed since the oldest held request: send what is held."""
        self._timer = None
        if self.held:
            self._release(self.room())

    def take_all(self) -> list[Pending]:
        """Stop holding: the held requests, for the pool to fail (it closes)."""
        held, self.held = self.held, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return held

    def _arm(self) -> None:
        """Release what is held ``wait`` after the oldest held request (once armed, the timer
        is not moved by later requests)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait, self.expire)

    def _release(self, worker: W | None) -> None:
        """Send up to one batch of held requests to ``worker`` (None: the least busy one)."""
        batch, self.held = self.held[: self.size], self.held[self.size :]
        live = []
        for pending in batch:
            if pending.future.done():  # cancelled while held: it never reaches a worker
                self._settled(pending)
            else:
                live.append(pending)
        if worker is None:
            worker = least_busy(self._ready())
        for pending in live:
            self._send(pending, worker)
        if not self.held:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif (idle := self.room()) is not None:
            self._release(idle)
        else:
            self._arm()


class _NotHolding(BatchHolder[Any]):
    def add(self, pending: Pending) -> None:
        raise AssertionError("a request was held by a pool that does not batch")


def _nothing(*_: object) -> None:
    """No callback of the shared holder is ever called: it holds nothing."""


#: The holder of every pool without adaptive batching, shared: it never holds a request (the
#: pool does not call ``add``), so ``on_room`` and ``take_all`` find nothing. One holder per
#: pool, with its callbacks, was 0.4 KB a model at ten thousand models (issue 23).
NOT_HOLDING: BatchHolder[Any] = _NotHolding(0, 0.0, 1, ready=tuple, cheap=bool, send=_nothing, settled=_nothing)
