"""Local worker processes: one model's elastic group, on its runtime's shared host.

Where a model's requests run::

    scheduler ──submit──> ProcessPool ──┬─> dedicated workers (0..parallel_workers), if any are ready
                                        └─> its runtime's host, while it has none

A model is *resident* when its runtime's host holds it loaded. A resident model with
no dedicated worker is served by the host, together with the runtime's other quiet
models: a thousand tiny models cost one process, and a request to any of them needs no
process to start. When a model's requests pile up (on the host: ``SCALE_UP_AT`` in
flight, or as many as its capacity, with as many on average over the last moments, see
``SCALE_UP_TAU``; else twice as many as it has workers), a dedicated worker is forked
from the host, which already holds the model, so it starts in milliseconds; up to
``parallel_workers``.
A dedicated worker that has had no request for ``worker_idle_timeout`` is retired, down
to ``min_workers``.

Adaptive batching (``max_batch_size`` and ``max_batch_time``) is done here, where every
worker's load is known. A request measured as cheap goes at once where coalescing alone
would send it (the busiest worker with fewer than ``BATCH_DEPTH`` in flight); any other
goes at once to an idle worker (one of the first ``cores``, at least two). Otherwise
requests are held, and the first worker to have room takes up to ``max_batch_size`` of
them as one batch. A full batch, or one held ``max_batch_time``, is queued on the least
busy worker. Cheap requests are not held: the pool's capacity for them is what coalescing's
is, so past it they wait in the scheduler's queue, exactly as with batching off. Held
requests count as in flight (within ``capacity``); a cancelled one is dropped before it
reaches a worker; on ``aclose`` the held ones fail with ``ModelNotReady``; if every worker
died, they go to the host or fail like any request.

Bounds: the scheduler never submits past ``capacity``: the dispatch policy's depth per
ready worker, or one batch's depth on the host. An evicted model (see
:mod:`runtime_core.pools.residency`) has a capacity of one: its first request brings it
back and waits here, the others wait in the scheduler's queue, where queue limits apply.

Failures:

* **Worker death** (any signal, OOM, exit) shows as EOF on its socket at once. Its
  requests are sent once more to a sibling worker (never to the shared host, which they
  might take down too), or fail with
  :class:`~runtime_core.errors.WorkerDied` (503) if none can take them or they were
  already retried. It is replaced.
* **Host death**: the requests it held for this model are retried once on a dedicated
  worker or fail with 503; the model becomes evicted, and its next request loads it into
  a new host. Dedicated workers keep serving. A load that fails because its host died
  is retried once on a fresh host for the requests that waited for it (503 for those
  already retried). A request parked for a load longer than ``worker_timeout`` fails
  with 503 (``expire_parked``, from the supervisor).
* **Hangs**: an idle worker that leaves a heartbeat unanswered (it was stopped, say) is
  killed and replaced. A request running longer than ``worker_timeout`` gets its worker (or host)
  SIGKILLed; that request fails with :class:`~runtime_core.errors.DeadlineExceeded` (it
  is not retried: it may be the cause), the others are retried as above. While a worker's
  oldest request is overdue, dispatch prefers its siblings.
* **Deadlines** of a request waiting for its model to come back are kept: it fails with
  ``DeadlineExceeded`` when its deadline passes, without waiting for the load.
* **Cancel**: cancelling a submitted future does not stop the worker; its reply is
  dropped when it comes.
* **aclose**: waits for in-flight requests (up to ``grace``), fails waiting ones, asks
  each worker to unload and exit, unloads the model from the host; processes that do not
  exit in time are killed.

Where it is written: this module holds the pool's state, requests and failures, over the
:class:`~runtime_core.pools.workers.WorkerGroup` both backends share; residency, parking and
isolation are in :mod:`~runtime_core.pools.placement`, dedicated workers (forking, retiring,
hangs, CPU priority) in :mod:`~runtime_core.pools.scaling`, adaptive batching in
:mod:`~runtime_core.pools.batching`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import ModelLoadError, ModelNotReady, RuntimeCoreError
from runtime_core.limits import cpu_count
from runtime_core.plugins import RuntimeEntry
from runtime_core.pools.base import ModelPool, PoolHealth
from runtime_core.pools.batching import NOT_HOLDING, BatchHolder
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.dispatch import BATCH_DEPTH, PACK_BELOW
from runtime_core.pools.host_handle import Host
from runtime_core.pools.placement import EVICTED, HOST_COST_LIMIT, LOADING, RESIDENT, Placement
from runtime_core.pools.residency import Residency
from runtime_core.pools.scaling import SCALE_UP_AT, Scaling
from runtime_core.pools.templates import Templates
from runtime_core.pools.workers import WorkerGroup, dispatch_for
from runtime_core.runtime import declared_metadata
from runtime_core.settings import ModelSettings, ServerSettings
from runtime_core.spec import WorkerSpec, worker_spec

log = logging.getLogger("runtime_core.pools")

__all__ = ["EVICTED", "HOST_COST_LIMIT", "LOADING", "RESIDENT", "SCALE_UP_AT", "ProcessPool"]


class ProcessPool(Placement, Scaling):
    """One model's elastic group of worker processes (see the module docstring)."""

    # One pool per model: its attributes in slots, not in a dict of its own (a dict of about
    # forty keys was 1.6 KB a model at ten thousand models, issue 23).
    __slots__ = (
        "_background_wanted",
        "_closing",
        "_decisions",
        "_entry",
        "_group",
        "_held",
        "_host",
        "_inflight",
        "_load",
        "_load_at",
        "_load_started",
        "_loading",
        "_moving",
        "_nice",
        "_parked",
        "_residency",
        "_restarts",
        "_retiring",
        "_service",
        "_slot",
        "_spawn_failed_at",
        "_spawning",
        "_stalled_host",
        "_templates",
        "_threads",
        "_uri",
        "_workers",
        "dispatch",
        "hold",
        "idle_timeout",
        "lazy",
        "max_workers",
        "memory",
        "metadata",
        "min_workers",
        "name",
        "on_capacity",
        "server",
        "settings",
        "state",
        "uri_size",
    )

    def __init__(
        self,
        settings: ModelSettings,
        entry: RuntimeEntry,
        server: ServerSettings,
        *,
        uri: str | None,
        templates: Templates,
        residency: Residency,
        lazy: bool = False,
    ) -> None:
        self.on_capacity = ModelPool.on_capacity  # until the scheduler sets its own
        self.settings = settings
        self.name = settings.key  # a version of a model is its own pool: messages say which
        self.server = server
        self.max_workers = max(1, settings.workers(server))
        self.min_workers = min(self.max_workers, settings.min_workers_for(server))
        #: Adaptive batching (``max_batch_size`` > 1 and ``max_batch_time`` > 0): the most
        #: requests held here for one batch, 0 when off. See :mod:`runtime_core.pools.batching`.
        self.hold = settings.max_batch_size if settings.max_batch_size > 1 and settings.max_batch_time > 0 else 0
        if self.hold:
            # Batches are held for dedicated workers (a host serves what it finds at each
            # wake-up, for all its models): keep one.
            self.min_workers = max(self.min_workers, 1)
        self.idle_timeout = server.worker_idle_timeout
        batchable = bool(getattr(entry.cls, "supports_batching", False))
        self.dispatch = dispatch_for(batchable, server.pipeline_depth, settings.max_batch_size, cpu_count())
        self._group = WorkerGroup(self.name, self.max_workers, server.worker_timeout, server.worker_overdue_after)
        # What a host needs to load the model (:attr:`spec`) is made when it loads it, not kept:
        # a copy of the settings as a dict per pool was 1 KB a model at ten thousand (issue 23).
        self._entry = entry
        self._uri = uri
        self._threads = settings.thread_cap(server)
        self.uri_size = 0
        if uri:
            with contextlib.suppress(OSError):
                self.uri_size = os.path.getsize(uri)
        self.memory = 0
        self.state = EVICTED
        self.lazy = lazy
        self._templates = templates
        self._residency = residency
        self._workers = self._group.workers  # the same list: indexed by worker
        # Lists, not sets: they hold a worker or two at most, and an empty set is 216 bytes.
        self._spawning: list[int] = []  # indices of workers being started
        self._retiring: list[int] = []  # id() of connections being retired
        self._host: Host | None = None
        self._slot = 0
        self._parked: list[Pending] = []
        self._held: BatchHolder[Connection] = (
            NOT_HOLDING
            if not self.hold
            else BatchHolder(
                self.hold,
                settings.max_batch_time,
                self.dispatch.cores,
                ready=self._ready,
                cheap=lambda: self._cheap,
                send=self._send_held,
                settled=self._settled,
            )
        )
        self._loading: asyncio.Task[None] | None = None
        self._moving: asyncio.Task[None] | None = None
        self._service = 0.0  # mean service seconds per request (see HOST_COST_LIMIT)
        self._stalled_host = False  # its call stalled its host: unmeasured, but not cheap
        self._spawn_failed_at = -math.inf  # loop time a worker last failed to start
        self._load_started = 0.0  # loop time the running bring-back started
        self._inflight = 0
        self._load = 0.0  # time-weighted mean of _inflight (SCALE_UP_TAU), as of _load_at
        self._load_at = 0.0
        self._restarts = 0
        self._decisions: Counter[str] | None = None  # made at the first decision (density)
        self._closing = False
        self._nice = 0
        self._background_wanted = False
        self.metadata = declared_metadata(settings)

    @property
    def spec(self) -> WorkerSpec:
        """What a host (or a fresh worker interpreter) builds the model's runtime from."""
        return worker_spec(self.settings, self._entry, self.server, uri=self._uri, threads=self._threads)

    @property
    def import_path(self) -> str:
        """The runtime's import path: which host serves the model."""
        return self._entry.import_path

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._residency.add(self)
        if self.lazy:
            return
        try:
            await self._bring_in()
            await asyncio.gather(*(self._spawn(i) for i in range(self.min_workers)))
        except BaseException:
            await self.aclose(grace=0)
            raise
        if self.min_workers and not self._ready():
            await self.aclose(grace=0)
            raise ModelLoadError(f"model {self.name!r}: its workers failed to start", model=self.name)

    async def aclose(self, grace: float = 30.0) -> None:
        self._closing = True
        await self._group.drain(grace, lambda: self._inflight > len(self._parked))
        held = self._held.take_all()
        for pending in self._take_parked() + held:
            self._fail(pending, ModelNotReady(f"model {self.name!r} was unloaded", model=self.name))
        if self._loading is not None:
            self._loading.cancel()
        await self._group.unload(lambda: self._workers, 5.0)
        if self._host is not None:
            self._host.forget(self._slot)
            self._templates.release(self._host)
            self._host = None
        self._residency.remove(self)
        self.state = EVICTED
        self._group.cancel_background()

    # ------------------------------------------------------------------ requests

    def _ready(self) -> list[Connection]:
        return self._group.ready()  # [] at once for a model served by its host alone

    @property
    def capacity(self) -> int:
        if self._closing:
            return 0
        # Runs several times per request: _ready() is [] at once for a host-served model.
        ready = len(self._ready())
        if ready:
            if self.hold and self._cheap:
                # Cheap requests past what every worker can take wait in the scheduler's queue,
                # as with batching off, not held here: the same queue, the same moment they
                # leave it, the same worker (``batching.room``). Held here, they waited longer
                # than with coalescing alone at high concurrency (docs/benchmarks.md).
                return ready * BATCH_DEPTH
            return ready * self.dispatch.per_worker
        if self.state is RESIDENT:
            return self.dispatch.per_worker
        return 1  # one request brings the model back; the others wait in the scheduler

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def parallelism(self) -> int:
        return max(1, len(self._ready()))

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        now = loop.time()
        pending = Pending(future, envelope, self, 0, now)
        self._average_load(now)
        self._inflight += 1
        self._residency.touch(self)
        if self.state is not RESIDENT and not self._ready():
            self._park(pending)
            self._start_bring_in()
            return future
        if self.hold and self._ready():
            self._held.add(pending)  # see runtime_core.pools.batching
        else:
            self._dispatch(pending)
        self._maybe_scale_up()
        return future

    def _dispatch(self, pending: Pending, exclude: Connection | None = None, host_ok: bool = True) -> bool:
        ready = (c for c in self._workers if c is not None and c.ready and c is not exclude)
        worker = self.dispatch.pick(ready, full_ok=pending.retried)
        if worker is not None:
            pending.slot = 0
            worker.send(pending)
            return True
        if host_ok and self._wants_own_workers:
            if self._start_own_worker():
                self._park(pending)  # sent on when the worker is ready (``_spawn``)
                return True
            ready = (c for c in self._workers if c is not None and c.ready and c is not exclude)
            worker = self.dispatch.pick(ready, full_ok=True)
            if worker is not None:  # every worker full and no room for another: queue on one
                pending.slot = 0
                worker.send(pending)
                return True
        host = self._host
        if host_ok and self.state is RESIDENT and host is not None and host.alive and host.conn is not exclude:
            pending.slot = self._slot
            host.submit(pending)
            return True
        self._fail(pending, self._group.no_worker())
        return False

    # ------------------------------------------------------------------ adaptive batching

    @property
    def _cheap(self) -> bool:
        """The requests are measured as cheap: those the dispatch policy packs."""
        return 0.0 < self.dispatch.cost < PACK_BELOW

    def _send_held(self, pending: Pending, worker: Connection | None) -> None:
        """A held request leaves for ``worker`` (None: every worker is gone)."""
        if worker is None:
            self._dispatch(pending)  # no worker left: the host, or a clean failure
        else:
            pending.slot = 0
            worker.send(pending)

    def _fail(self, pending: Pending, error: RuntimeCoreError) -> None:
        self._inflight -= 1
        if not pending.future.done():
            pending.future.set_exception(error)
        self.on_capacity()

    def request_done(self, outcome: Outcome) -> None:
        self.dispatch.observe(outcome.compute)
        self._observe(outcome)
        self._average_load(asyncio.get_running_loop().time())
        self._inflight -= 1
        # A worker has room again: held requests never wait for max_batch_time while a
        # worker could run them.
        self._held.on_room()
        self.on_capacity()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._group.background(coro)

    # ------------------------------------------------------------------ failures

    def _decided(self, decision: str) -> None:
        """Count one elastic move (see :attr:`PoolHealth.decisions`)."""
        if self._decisions is None:
            self._decisions = Counter()
        self._decisions[decision] += 1

    def _worker_lost(self, conn: Connection) -> None:
        retiring = id(conn) in self._retiring
        if retiring:
            self._retiring.remove(id(conn))
        if self._workers[conn.index] is conn:
            self._workers[conn.index] = None
        self._requeue(list(conn.pending.values()), conn, conn.timed_out)
        conn.pending.clear()
        self.on_capacity()
        if retiring or self._closing or not conn.hello.done() or conn.hello.exception():
            return
        log.warning("model %r: worker %d (pid %d) died; replacing it", self.name, conn.index, conn.pid)
        self._restarts += 1
        self._background(self._spawn(conn.index))

    def _requeue(self, orphans: list[Pending], lost: Connection | None, timed_out: set[int]) -> None:
        def retry(pending: Pending) -> bool:
            pending.retried = True
            if self.state is not RESIDENT and not self._ready():
                pending.sent_at = asyncio.get_running_loop().time()  # parked now: see expire_parked
                self._parked.append(pending)  # the host went: bring the model back, then retry
                self._start_bring_in()
            else:
                # A request whose dedicated worker died is retried on a sibling only, never
                # on the shared host: if it was the cause, it must not take the host along.
                self._dispatch(pending, exclude=lost, host_ok=lost is None or lost.index < 0)
            return True

        self._group.requeue(
            orphans, timed_out, closing=self._closing, retry=retry, fail=self._fail, settled=self._settled
        )

    def _settled(self, pending: Pending) -> None:
        """A request whose future is done (cancelled) left the pool without an answer."""
        self._inflight -= 1

    # ------------------------------------------------------------------ health

    def health(self) -> PoolHealth:
        # A readiness probe, or the index, is where a stopped host is found while no request
        # wakes the supervisor: killed here, its models load into a new host on their next
        # request, with no timer running on an idle server (issue 20).
        host = self._host
        serving = host is None or not host.kill_if_stopped()
        ready = len(self._ready())
        return PoolHealth(
            workers=self.max_workers,
            ready=ready,
            restarts=self._restarts,
            residency=self.state,
            serving=serving,
            placement="workers" if ready else "host",
            decisions=dict(self._decisions or {}),
        )
