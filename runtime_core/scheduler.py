"""FairScheduler: per-model queues and fair sharing of the machine across models.

Data flow::

    handler ──submit(model, envelope)──> lane(model).queue ──_pump()──> pool.submit ──> worker
       ^                                                                   │
       └──────────────────────── Outcome <─────────────────────────────────┘

What is bounded:

* each model's queue holds at most ``max_queue_size`` requests; one more is
  refused at once with :class:`~runtime_core.errors.QueueFull` (503 + Retry-After);
* each model has at most its pool's ``capacity`` requests in flight;
* while two or more models have work (queued or in flight), all models together
  have at most ``budget`` requests in flight (default: two full batches per core). The first request
  of a model that was idle (nothing queued, nothing in flight) may go past the
  budget, so a light model never waits for a heavy model's request to finish;
  a model that stays busy gets no such pass, so weights hold under contention.

Policy (start-time fair queueing on measured cost): each model has a virtual
time. Sending a request advances it by the model's recent service time
(an EWMA of the service seconds its workers report, not counting time they
waited for a CPU) divided by its ``weight``,
and the true cost corrects it when the reply comes. The next free slot goes to
the waiting model with the smallest virtual time, so one 20 ms request counts
as much as twenty 1 ms ones, and a model of weight 2 gets twice the compute of
a model of weight 1. A model that had nothing to do does not bank credit: when
it becomes active its virtual time is raised to the scheduler's clock. Hence a
newly active model is served after at most one in-flight completion, and its
waiting time is bounded by (number of active models) x (one request of each).

Mechanism (the cost of a request does not grow with the number of models, #9):
a heap keyed by virtual time holds the models that have queued work, and a
second one the models whose first queued request has the idle pass. Entries
are invalidated lazily: a model is pushed again whenever its virtual time
changes or it may be able to send (a request queued, one of its own finished,
its pool reported capacity through its own ``on_capacity`` callback), and an
entry is checked against the model's state when it reaches the top; a model
found at its pool's capacity leaves the heap until one of those events. A
dispatch costs O(log a), a the number of active models, and stale entries are
swept out once they outnumber the active models. The set of active models is
kept as requests come and go. Each model's queue, cost estimate and virtual time
are its lane's (:mod:`runtime_core.lanes`).

On the CPU, while some model has work within its means, the workers of every
saturated model yield (``SCHED_IDLE``), and weights become nice values: see
:mod:`runtime_core.cpupriority`, told after each round of dispatch which models'
work changed.

Cancel: a caller that goes away (client disconnect) cancels its future; the
request is dropped from the queue without reaching a worker. Deadlines: a
request whose deadline passes while queued fails with
:class:`~runtime_core.errors.DeadlineExceeded` and never reaches a worker; the
worker checks the deadline once more before decoding. Removing a model fails
its queued requests with :class:`~runtime_core.errors.ModelNotReady`.
Worker death: the pool retries or fails the request's future; the scheduler
only sees the outcome (an error ``code`` for the observers) and frees the slot.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable

from runtime_core.cpupriority import CpuPriority
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import DeadlineExceeded, ModelNotReady, QueueFull, ShuttingDown
from runtime_core.lanes import Lane, LaneStats, QueuedRequest
from runtime_core.limits import cpu_count
from runtime_core.pools.base import ModelPool

log = logging.getLogger("runtime_core.scheduler")

#: ``observer(model, result, wait, compute, total)``, called once per request that reached a
#: model's queue: ``result`` is the worker's :class:`Outcome` (``code`` 0: success) or, when no
#: worker answered (queue full, deadline passed in the queue, worker died), an error ``code``.
#: ``wait`` is the seconds spent queued here, ``compute`` the seconds the worker reported
#: (0 without an Outcome), ``total`` the seconds from submit to the answer.
Observer = Callable[[str, Outcome | int, float, float, float], None]

#: Requests that make one full batch in a worker (see ``pool.BATCH_DEPTH``).
_BATCH = 8


def default_budget() -> int:
    """Two full batches per core: one running and one waiting. A smaller budget starves
    batching: workers wake to fewer requests, run smaller batches and pay a model's per-call
    overhead more often for the same CPU (figures in docs/benchmarks.md); a larger one only
    moves waiting from our queues, where deadlines, cancellation and fair order apply, into
    the workers' sockets."""
    return 2 * _BATCH * cpu_count()


class FairScheduler:
    """Routes requests to model pools, fairly. See the module docstring for the policy."""

    def __init__(self, budget: int | None = None, *, cpu_priority: bool = True) -> None:
        self.budget = budget or default_budget()
        self._lanes: dict[str, Lane] = {}
        self._inflight = 0
        self._queued = 0
        self._clock = 0.0
        self._closing = False
        self._seq = itertools.count()
        # Heaps of (vtime, seq, lane); an entry is live while seq is the lane's ready_seq
        # (pass_seq). seq also breaks ties in arrival order.
        self._ready: list[tuple[float, int, Lane]] = []
        self._passes: list[tuple[float, int, Lane]] = []
        self._active: set[Lane] = set()  # lanes with work queued or in flight
        self._priority = CpuPriority(cpu_priority, self._lanes, self._active)
        self._idle = asyncio.Event()
        self._idle.set()
        self._notify = self._capacity  # one bound method for every lane (see Lane.notify)
        #: Called once per request; see :data:`Observer` (the metrics hook).
        self.observers: list[Observer] = []

    # ------------------------------------------------------------------ models

    def add(self, key: str, pool: ModelPool, *, weight: float = 1.0, max_queue: int = 1024) -> Lane:
        if key in self._lanes:
            self.remove(key)
        lane = Lane(key, pool, weight, max_queue, vtime=self._clock, notify=self._notify)
        self._lanes[key] = lane
        pool.on_capacity = lane
        self._priority.added(lane)
        return lane

    def replace_pool(self, key: str, pool: ModelPool) -> ModelPool:
        """Send new requests to ``pool``; returns the old pool (to drain and close)."""
        lane = self._lanes[key]
        old, lane.pool = lane.pool, pool
        pool.on_capacity = lane
        self._priority.pool_replaced(lane)
        self._touch(lane)
        self._schedule(lane)
        self._pump()
        return old

    def remove(self, key: str) -> ModelPool | None:
        """Stop routing to ``key``; its queued requests fail with 503. Returns its pool."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return None
        lane.removed = True
        self._active.discard(lane)
        self._priority.removed(lane)
        lane.pass_item = None
        self._queued -= len(lane.queue)
        while lane.queue:
            item = lane.queue.popleft()
            if not item.future.done():
                item.future.set_exception(ModelNotReady(f"model {key!r} was unloaded", model=key))
        self._pump()  # the budget, the priorities and drain may depend on this lane
        return lane.pool

    def close(self) -> None:
        """Refuse new requests (queued ones still run)."""
        self._closing = True

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (``close`` first); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._inflight or self._queued:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._lanes

    # ------------------------------------------------------------------ requests

    async def submit(self, key: str, envelope: Envelope) -> Outcome:
        """Queue one request for model ``key`` and wait for its outcome."""
        lane = self._lanes.get(key)
        if lane is None:
            raise ModelNotReady(f"model {key!r} is not loaded", model=key)  # the handler saw it exist
        if self._closing:
            raise ShuttingDown("the server is shutting down", model=key)
        if len(lane.queue) >= lane.max_queue:
            lane.stats.rejected += 1
            if self.observers:
                self._observe(key, QueueFull.code, 0.0, 0.0, 0.0)
            raise QueueFull(
                f"model {key!r}: queue is full ({lane.max_queue} requests waiting)",
                model=key,
                retry_after=max(1.0, lane.cost * len(lane.queue)),
            )
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        idle = not lane.queue and not lane.inflight
        if idle:
            lane.vtime = max(lane.vtime, self._clock)
        if not envelope.arrived:
            envelope.arrived = time.time()
        item = QueuedRequest(future, envelope, time.monotonic())
        lane.push(item)
        if idle:
            lane.pass_item = item
        self._queued += 1
        self._idle.clear()
        self._touch(lane)
        self._schedule(lane)
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            lane.stats.cancelled += 1
            try:  # still queued: drop it so it never reaches a worker
                lane.queue.remove(item)
            except ValueError:
                pass
            else:
                self._dequeued(lane, item)
                self._pump()  # the lane may have gone idle: budget, priorities, drain
            raise

    def _dequeued(self, lane: Lane, item: QueuedRequest) -> None:
        """Account for ``item`` having left ``lane``'s queue (sent, expired or dropped)."""
        self._queued -= 1
        if item is lane.pass_item:
            lane.pass_item, lane.pass_seq = None, -1
        self._touch(lane)

    def _touch(self, lane: Lane) -> None:
        """Keep the active set current after ``lane``'s queue or in-flight count changed."""
        if lane.removed:
            return
        if lane.queue or lane.inflight:
            self._active.add(lane)
        else:
            self._active.discard(lane)
        self._priority.touched(lane)

    def _schedule(self, lane: Lane) -> None:
        """Put ``lane`` in the heaps if it has queued work (its entries were popped, or its
        virtual time moved); whether it can send is checked when it reaches the top."""
        if lane.removed or not lane.queue:
            return
        if lane.ready_seq < 0 or lane.ready_key != lane.vtime:
            lane.ready_seq, lane.ready_key = next(self._seq), lane.vtime
            heapq.heappush(self._ready, (lane.vtime, lane.ready_seq, lane))
        if lane.pass_item is not None and lane.pass_seq < 0:
            lane.pass_seq = next(self._seq)
            heapq.heappush(self._passes, (lane.vtime, lane.pass_seq, lane))
        if len(self._ready) + len(self._passes) > 4 * len(self._active) + 64:
            self._sweep()

    def _sweep(self) -> None:
        """Drop stale heap entries. Every live entry left belongs to an active lane, so this
        runs at most once per 2 x (active lanes) + 64 pushes: O(1) amortised."""
        ready = []
        for entry in self._ready:
            lane = entry[2]
            if entry[1] == lane.ready_seq:
                if lane.queue and not lane.removed:
                    ready.append(entry)
                else:
                    lane.ready_seq = -1
        self._ready = ready
        heapq.heapify(ready)
        self._passes = [e for e in self._passes if e[1] == e[2].pass_seq and not e[2].removed]
        heapq.heapify(self._passes)

    def _capacity(self, lane: Lane) -> None:
        """``lane``'s pool has room again (or changed its worker count)."""
        self._touch(lane)
        self._schedule(lane)
        self._pump()

    def _pick(self) -> Lane | None:
        """Pop the lane with the smallest virtual time that can send now; while over the
        budget with other models active, only a lane whose head has the idle pass."""
        if len(self._active) > 1 and self._inflight >= self.budget:
            heap = self._passes
            while heap:
                _, seq, lane = heapq.heappop(heap)
                if seq != lane.pass_seq:
                    continue  # stale
                lane.pass_seq = -1
                if lane.removed or lane.pass_item is None:
                    continue
                if lane.pool.inflight < lane.pool.capacity:
                    return lane
            return None
        heap = self._ready
        while heap:
            _, seq, lane = heapq.heappop(heap)
            if seq != lane.ready_seq:
                continue  # stale: the lane was pushed again with a newer virtual time
            lane.ready_seq = -1
            if lane.removed or not lane.queue:
                continue
            if lane.pool.inflight < lane.pool.capacity:
                return lane
            # Full: it comes back when its pool reports capacity or one of its requests ends.
        return None

    def _pump(self) -> None:
        while True:
            lane = self._pick()
            if lane is None:
                break
            item = lane.pop()
            self._dequeued(lane, item)
            if item.future.done():  # cancelled by a client that went away
                pass
            elif item.envelope.deadline and time.time() > item.envelope.deadline:
                lane.stats.expired += 1
                if self.observers:
                    waited = time.monotonic() - item.enqueued
                    self._observe(lane.key, DeadlineExceeded.code, waited, 0.0, waited)
                item.future.set_exception(
                    DeadlineExceeded(f"model {lane.key!r}: the request's deadline passed while queued", model=lane.key)
                )
            else:
                self._send(lane, item)
            self._schedule(lane)
        self._priority.update()
        if not self._inflight and not self._queued:
            self._idle.set()

    def _send(self, lane: Lane, item: QueuedRequest) -> None:
        self._clock = max(self._clock, lane.vtime)
        lane.charge(item)
        lane.inflight += 1
        self._inflight += 1
        self._touch(lane)
        item.sent = time.monotonic()
        sent = lane.pool.submit(item.envelope)
        sent.add_done_callback(functools.partial(self._finished, lane, item))

    def _finished(self, lane: Lane, item: QueuedRequest, done: asyncio.Future[Outcome]) -> None:
        lane.inflight -= 1
        self._inflight -= 1
        wait = time.monotonic() - item.enqueued
        if done.cancelled():
            error: BaseException | None = ModelNotReady(f"model {lane.key!r}: the request was cancelled")
        else:
            error = done.exception()
        if error is None:
            outcome = done.result()
            used = outcome.cpu or outcome.compute  # service time (less CPU waits) where reported
            lane.settle(item, used)
            outcome.queued = item.sent - item.enqueued  # for the front ends' request log
            if self.observers:
                self._observe(lane.key, outcome, outcome.queued, outcome.compute, wait)
            if not item.future.done():
                item.future.set_result(outcome)
        else:
            if self.observers:
                self._observe(lane.key, getattr(error, "code", 1), item.sent - item.enqueued, 0.0, wait)
            if not item.future.done():
                item.future.set_exception(error)
        self._touch(lane)
        self._schedule(lane)
        self._pump()

    def _observe(self, key: str, result: Outcome | int, wait: float, compute: float, total: float) -> None:
        for observer in self.observers:
            try:
                observer(key, result, wait, compute, total)
            except Exception:  # a broken observer must not break request accounting
                log.exception("scheduler observer %r failed", observer)

    # ------------------------------------------------------------------ visibility

    def stats(self) -> dict[str, LaneStats]:
        """Per-model queue depth, in-flight requests, refusals and cancellations."""
        return {key: lane.figures() for key, lane in self._lanes.items()}
