"""A model's lane in the fair scheduler: its queue, its measured cost and its virtual time.

The lane only keeps the books; :mod:`runtime_core.scheduler` decides when a request is queued,
sent or dropped, and :mod:`runtime_core.cpupriority` reads and sets the lane's CPU class.

Cost bookkeeping (start-time fair queueing on measured cost): sending a request advances the
lane's virtual time by its current cost estimate divided by its ``weight``
(:meth:`Lane.charge`); the reply brings the service seconds the worker reports, which correct
the virtual time and move the estimate, an EWMA (:meth:`Lane.settle`).

What is bounded: a lane never holds more than ``max_queue`` requests (the scheduler refuses
the next one before calling :meth:`Lane.push`), and a lane with nothing queued holds no queue
of its own (see :data:`_NO_QUEUE`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime_core.envelope import Envelope, Outcome
from runtime_core.pools.base import ModelPool

#: Weight of the newest measurement in a lane's cost estimate.
_EWMA = 0.2
#: A new lane's cost estimate (seconds), until its first reply.
_INITIAL_COST = 0.001

# A lane's CPU class, as :class:`~runtime_core.cpupriority.CpuPriority` last classified it:
# nothing to do; no more requests than workers; more requests than workers.
IDLE, MODEST, SATURATED = 0, 1, 2


@dataclass(slots=True)
class QueuedRequest:
    """One request from :meth:`FairScheduler.submit` until its answer."""

    future: asyncio.Future[Outcome]
    envelope: Envelope
    #: ``time.monotonic()`` when it was queued and when it was sent to the pool.
    enqueued: float
    sent: float = 0.0
    #: The lane's cost estimate when it was sent (what :meth:`Lane.charge` charged).
    estimate: float = 0.0


@dataclass(slots=True)
class LaneStats:
    """Per-model figures for metrics (read through :meth:`FairScheduler.stats`)."""

    queued: int = 0
    inflight: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0


# The queue of every lane with nothing queued, shared: an empty deque is not small, and at ten
# thousand models the empty ones added up (issue 23). A lane gets a deque of its own in
# :meth:`Lane.push`, the one place that appends, and gives it back in :meth:`Lane.pop` when its
# queue empties. Appending to the shared one is a bug, and raises.
class _NoQueue(deque[QueuedRequest]):
    def append(self, item: QueuedRequest) -> None:
        raise AssertionError("a request was queued in the shared empty queue")


_NO_QUEUE: deque[QueuedRequest] = _NoQueue()


@dataclass(slots=True, eq=False)  # compared and hashed by identity: a re-added key is a new lane
class Lane:
    """One model's queue and accounting."""

    key: str
    pool: ModelPool
    weight: float
    max_queue: int
    #: The queued requests: :data:`_NO_QUEUE` while there are none (see there).
    queue: deque[QueuedRequest] = field(default_factory=lambda: _NO_QUEUE)
    vtime: float = 0.0
    cost: float = _INITIAL_COST
    inflight: int = 0
    background: bool = False
    stats: LaneStats = field(default_factory=LaneStats)
    removed: bool = False
    #: Sequence number of the lane's live entry in the ready heap (-1: none) and its key.
    ready_seq: int = -1
    ready_key: float = 0.0
    #: The queued request that has the idle pass (always the queue's head), its heap entry.
    pass_item: QueuedRequest | None = None
    pass_seq: int = -1
    #: :data:`IDLE`, :data:`MODEST` or :data:`SATURATED`, as last classified for CPU priorities.
    state: int = IDLE
    #: The scheduler's handler of a pool's capacity, one bound method shared by every lane:
    #: the lane itself is its pool's ``on_capacity`` (:meth:`__call__`). A ``functools.partial``
    #: per lane was 0.26 KB, 2.5 MB at 10,000 models (issue 23).
    notify: Callable[[Lane], None] | None = None

    def __call__(self) -> None:
        """Its pool's ``on_capacity``: the pool has room again, or changed its worker count."""
        if self.notify is not None:
            self.notify(self)

    def push(self, item: QueuedRequest) -> None:
        """Queue ``item`` at the tail."""
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append(item)

    def pop(self) -> QueuedRequest:
        """Take the head of the queue (there is one)."""
        item = self.queue.popleft()
        if not self.queue:
            self.queue = _NO_QUEUE
        return item

    def charge(self, item: QueuedRequest) -> None:
        """``item`` is being sent: advance the virtual time by the cost it is expected to have."""
        item.estimate = self.cost
        self.vtime += self.cost / self.weight

    def settle(self, item: QueuedRequest, used: float) -> None:
        """``item`` was answered after ``used`` service seconds: move the estimate towards them
        and correct the virtual time by what :meth:`charge` charged too much or too little."""
        self.cost += _EWMA * (used - self.cost)
        self.vtime += (used - item.estimate) / self.weight

    def figures(self) -> LaneStats:
        """The lane's :class:`LaneStats`, with queue depth and in-flight count as they are now."""
        self.stats.queued = len(self.queue)
        self.stats.inflight = self.inflight
        return self.stats
