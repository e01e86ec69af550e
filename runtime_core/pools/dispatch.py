"""The dispatch policy: which of a model's workers takes the next request.

One replaceable strategy (:class:`Dispatch`); the pool calls ``pick`` with its ready
workers. The policy depends on the runtime and on what its requests cost (an EWMA of
the compute time workers report):

- *pack*, for batching runtimes (``supports_batching``) whose requests take under
  ``PACK_BELOW``: to the busiest worker that still has room (``BATCH_DEPTH`` in flight).
  A light load wakes one worker, which runs all that waits as one call; more workers
  join only as load grows.
- *cores*, for costlier batching runtimes: to the least-busy of the first ``cores``
  workers, up to ``BATCH_DEPTH`` each, overflowing to the others only when those are
  full. Every core gets a worker with a batch waiting, and no more processes than cores
  compete for the CPU.
- *spread*, for runtimes that do not batch: to the least-busy worker (ties to the
  lowest index), ``pipeline_depth`` each, so one slow request never holds up others
  while a worker idles.

A worker whose oldest request is overdue (it may be hung) is skipped while a sibling
has room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

#: Requests cheaper than this (seconds of worker compute) are packed onto busy workers.
PACK_BELOW = 0.002
#: Requests in flight per worker when packing: the largest coalesced batch.
BATCH_DEPTH = 8


class Target(Protocol):
    """What the policy sees of a worker."""

    index: int

    @property
    def load(self) -> int: ...

    @property
    def overdue(self) -> bool: ...


T = TypeVar("T", bound=Target)


class Dispatch:
    """Pick a worker for one request (see the module docstring)."""

    def __init__(self, batchable: bool, depth: int, batch_depth: int, cores: int) -> None:
        self.batchable = batchable
        self.depth = depth
        self.batch_depth = batch_depth
        self.cores = cores
        self.cost = 0.0  # EWMA of the compute seconds per request the workers report

    def observe(self, compute: float) -> None:
        self.cost += 0.1 * (compute - self.cost)

    @property
    def mode(self) -> str:
        if not self.batchable:
            return "spread"
        return "pack" if self.cost < PACK_BELOW else "cores"

    @property
    def per_worker(self) -> int:
        return self.depth if self.mode == "spread" else self.batch_depth

    def pick(self, workers: Iterable[T], *, full_ok: bool = False) -> T | None:
        """The worker for the next request, or None if every one is full. ``full_ok``: a
        retry, which takes the best worker even past its depth (a retry happens once per
        request, and only when a worker died, so this cannot grow without bound)."""
        mode = self.mode
        depth = 1 << 30 if full_ok else self.per_worker
        best: T | None = None
        best_key: tuple[int, ...] = ()
        for worker in workers:
            load = worker.load
            if load >= depth:
                continue
            if mode == "pack":
                key: tuple[int, ...] = (worker.overdue, -load, worker.index)
            elif mode == "cores":
                key = (worker.overdue, worker.index >= self.cores, load, worker.index)
            else:
                key = (worker.overdue, load, worker.index)
            if best is None or key < best_key:
                best, best_key = worker, key
        return best
