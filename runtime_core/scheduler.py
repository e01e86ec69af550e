"""FairScheduler: per-model queues and fair sharing of the machine across models.

Data flow::

    handler ──submit(model, body)──> lane(model).queue ──_pump()──> pool.submit ──> worker
       ^                                                              │
       └──────────────── outcome (status, bytes) <─────────────────────┘

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

On the CPU, while some model has work within its means (no more requests than
workers), the workers of every saturated model (more requests than workers) run
at ``SCHED_IDLE`` (see ``cpu_priority``): the kernel then runs the modest model's
worker the moment it wakes, and the flooded ones get all the rest. They return
to normal priority when the modest work is done.

Cancel: a caller that goes away (client disconnect) cancels its future; the
request is dropped from the queue without reaching a worker. Deadlines: a
request whose deadline passes while queued fails with
:class:`~runtime_core.errors.DeadlineExceeded` and never reaches a worker; the
worker checks the deadline once more before decoding. Removing a model fails
its queued requests with :class:`~runtime_core.errors.ModelNotReady`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import DeadlineExceeded, ModelNotReady, QueueFull, ShuttingDown
from runtime_core.limits import cpu_count
from runtime_core.pool import ModelPool

_EWMA = 0.2
_INITIAL_COST = 0.001

log = logging.getLogger("runtime_core.scheduler")

#: ``observer(model, result, wait, compute, total)``, called once per request that reached a
#: model's queue: ``result`` is the worker's :class:`Outcome` (``code`` 0: success) or, when no
#: worker answered (queue full, deadline passed in the queue, worker died), an error ``code``.
#: ``wait`` is the seconds spent queued here, ``compute`` the seconds the worker reported
#: (0 without an Outcome), ``total`` the seconds from submit to the answer.
Observer = Callable[[str, Outcome | int, float, float, float], None]


@dataclass(slots=True)
class _Item:
    future: asyncio.Future[Outcome]
    envelope: Envelope
    enqueued: float
    sent: float = 0.0
    estimate: float = 0.0
    skip_budget: bool = False


@dataclass(slots=True)
class LaneStats:
    """Per-model figures for metrics (read through :meth:`FairScheduler.stats`)."""

    queued: int = 0
    inflight: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    wait_seconds: float = 0.0
    compute_seconds: float = 0.0
    cost: float = 0.0
    background: bool = False


@dataclass(slots=True)
class Lane:
    """One model's queue and accounting."""

    key: str
    pool: ModelPool
    weight: float
    max_queue: int
    queue: deque[_Item] = field(default_factory=deque)
    vtime: float = 0.0
    cost: float = _INITIAL_COST
    inflight: int = 0
    background: bool = False
    stats: LaneStats = field(default_factory=LaneStats)


#: Requests that make one full batch in a worker (see ``pool.BATCH_DEPTH``).
_BATCH = 8


def default_budget() -> int:
    """Two full batches per core: one running and one waiting. A smaller budget starves
    batching (a 300-tree forest served 3x fewer requests for the same CPU with 8 in flight
    on 2 cores than with 32); a larger one only moves waiting from our queues, where
    deadlines, cancellation and fair order apply, into the workers' sockets."""
    return 2 * _BATCH * cpu_count()


class FairScheduler:
    """Routes requests to model pools, fairly. See the module docstring for the policy."""

    def __init__(self, budget: int | None = None, *, cpu_priority: bool = True) -> None:
        self.budget = budget or default_budget()
        self.cpu_priority = cpu_priority
        self._lanes: dict[str, Lane] = {}
        self._inflight = 0
        self._clock = 0.0
        self._closing = False
        #: Called once per request; see :data:`Observer` (the metrics hook).
        self.observers: list[Observer] = []

    # ------------------------------------------------------------------ models

    def add(self, key: str, pool: ModelPool, *, weight: float = 1.0, max_queue: int = 1024) -> Lane:
        lane = Lane(key, pool, weight, max_queue, vtime=self._clock)
        self._lanes[key] = lane
        pool.on_capacity = self._pump
        self._update_weights()
        return lane

    def _update_weights(self) -> None:
        """Give each model's workers a nice value from its weight, relative to the heaviest
        weight: the kernel then shares the CPU among busy models in those proportions (each
        nice step is a factor of about 1.25), whatever the batching in their workers."""
        if not self.cpu_priority or not self._lanes:
            return
        top = max(lane.weight for lane in self._lanes.values())
        for lane in self._lanes.values():
            lane.pool.set_nice(min(19, max(0, round(math.log(top / lane.weight) / math.log(1.25)))))

    def replace_pool(self, key: str, pool: ModelPool) -> ModelPool:
        """Send new requests to ``pool``; returns the old pool (to drain and close)."""
        lane = self._lanes[key]
        old, lane.pool = lane.pool, pool
        pool.on_capacity = self._pump
        self._update_weights()
        if lane.background:
            pool.set_background(True)
        self._pump()
        return old

    def remove(self, key: str) -> ModelPool | None:
        """Stop routing to ``key``; its queued requests fail with 503. Returns its pool."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return None
        while lane.queue:
            item = lane.queue.popleft()
            if not item.future.done():
                item.future.set_exception(ModelNotReady(f"model {key!r} was unloaded", model=key))
        return lane.pool

    def close(self) -> None:
        """Refuse new requests (queued ones still run)."""
        self._closing = True

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (``close`` first); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._inflight or any(lane.queue for lane in self._lanes.values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
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
        item = _Item(future, envelope, time.monotonic(), skip_budget=idle)
        lane.queue.append(item)
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            lane.stats.cancelled += 1
            with contextlib.suppress(ValueError):  # still queued: drop it so it never reaches a worker
                lane.queue.remove(item)
            raise

    def _pick(self) -> Lane | None:
        active = sum(1 for lane in self._lanes.values() if lane.queue or lane.inflight)
        over_budget = active > 1 and self._inflight >= self.budget
        best: Lane | None = None
        for lane in self._lanes.values():
            if not lane.queue or lane.pool.inflight >= lane.pool.capacity:
                continue
            if over_budget and not lane.queue[0].skip_budget:
                continue
            if best is None or lane.vtime < best.vtime:
                best = lane
        return best

    def _pump(self) -> None:
        while True:
            lane = self._pick()
            if lane is None:
                break
            item = lane.queue.popleft()
            if item.future.done():  # cancelled by a client that went away
                continue
            if item.envelope.deadline and time.time() > item.envelope.deadline:
                lane.stats.expired += 1
                if self.observers:
                    waited = time.monotonic() - item.enqueued
                    self._observe(lane.key, DeadlineExceeded.code, waited, 0.0, waited)
                item.future.set_exception(
                    DeadlineExceeded(f"model {lane.key!r}: the request's deadline passed while queued", model=lane.key)
                )
                continue
            self._clock = max(self._clock, lane.vtime)
            item.estimate = lane.cost
            lane.vtime += lane.cost / lane.weight
            lane.inflight += 1
            self._inflight += 1
            item.sent = time.monotonic()
            sent = lane.pool.submit(item.envelope)
            sent.add_done_callback(functools.partial(self._finished, lane, item))
        self._update_priorities()

    def _finished(self, lane: Lane, item: _Item, done: asyncio.Future[Outcome]) -> None:
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
            lane.cost += _EWMA * (used - lane.cost)
            lane.vtime += (used - item.estimate) / lane.weight
            lane.stats.completed += 1
            lane.stats.compute_seconds += outcome.compute
            lane.stats.wait_seconds += max(0.0, wait - outcome.compute)
            if self.observers:
                self._observe(lane.key, outcome, item.sent - item.enqueued, outcome.compute, wait)
            if not item.future.done():
                item.future.set_result(outcome)
        else:
            if self.observers:
                self._observe(lane.key, getattr(error, "code", 1), item.sent - item.enqueued, 0.0, wait)
            if not item.future.done():
                item.future.set_exception(error)
        self._pump()

    def _observe(self, key: str, result: Outcome | int, wait: float, compute: float, total: float) -> None:
        for observer in self.observers:
            try:
                observer(key, result, wait, compute, total)
            except Exception:  # a broken observer must not break request accounting
                log.exception("scheduler observer %r failed", observer)

    def _update_priorities(self) -> None:
        if not self.cpu_priority:
            return
        lanes = self._lanes.values()
        # Saturated: more work than the model has workers to run it on at once.
        saturated = {id(lane) for lane in lanes if lane.inflight + len(lane.queue) > lane.pool.parallelism}
        # A model with work that is within its means must not wait for the CPU behind one
        # that is flooded; while there is none, the flooded ones keep normal priority (so a
        # lone busy model does not yield to every other process on the host).
        modest = any((lane.queue or lane.inflight) and id(lane) not in saturated for lane in lanes)
        for lane in lanes:
            want = modest and id(lane) in saturated
            if want != lane.background:
                lane.pool.set_background(want)
                lane.background = want

    # ------------------------------------------------------------------ visibility

    def stats(self) -> dict[str, LaneStats]:
        """Per-model queue depth, in-flight, wait and service figures."""
        out = {}
        for key, lane in self._lanes.items():
            lane.stats.queued = len(lane.queue)
            lane.stats.inflight = lane.inflight
            lane.stats.cost = lane.cost
            lane.stats.background = lane.background
            out[key] = lane.stats
        return out

    @property
    def inflight(self) -> int:
        return self._inflight
