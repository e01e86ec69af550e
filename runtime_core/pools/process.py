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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Coroutine
from typing import Any

from runtime_core.control import Unload
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import DeadlineExceeded, ModelLoadError, ModelNotReady, RuntimeCoreError, WorkerDied
from runtime_core.limits import cpu_count
from runtime_core.messages import control_frame
from runtime_core.plugins import RuntimeEntry
from runtime_core.pools.base import COSTLY_REQUEST, ModelPool, PoolHealth
from runtime_core.pools.batching import BatchHolder
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.dispatch import BATCH_DEPTH, PACK_BELOW
from runtime_core.pools.host_handle import Host
from runtime_core.pools.residency import Residency
from runtime_core.pools.templates import Templates
from runtime_core.pools.workers import WorkerGroup, dispatch_for
from runtime_core.runtime import declared_metadata
from runtime_core.settings import ModelSettings, ServerSettings
from runtime_core.spec import worker_spec

log = logging.getLogger("runtime_core.pools")

#: Requests of one model in flight on its host that make it ask for a dedicated worker...
SCALE_UP_AT = 8
#: ...once its average in flight (an exponentially weighted mean over time, with this time
#: constant in seconds) has also reached ``SCALE_UP_SHARE`` of that threshold: requests that
#: pile up for a while, not a moment's coincidence. With spread traffic the busiest model
#: (a quarter of the requests of a Zipf mix over 1,000 models, about two in flight at
#: concurrency 8) reaches 8 in flight now and then by chance; a worker of its own then cost
#: 20-35 % more CPU per request and fewer requests per second (issue 9).
SCALE_UP_TAU = 0.5
SCALE_UP_SHARE = 0.75

#: Seconds of service per request (measured, as an exponentially weighted mean) from which a
#: model no longer runs on its runtime's shared host: its requests go to workers of its own,
#: forked when it has none (the request waits the few milliseconds a fork takes). On the host,
#: every quiet model of the runtime would wait behind each of its calls.
HOST_COST_LIMIT = COSTLY_REQUEST
#: Added to the nice value of the workers of a model over ``HOST_COST_LIMIT`` (see ``_apply_nice``).
COSTLY_NICE = 5
#: Seconds after a failed worker start before a model that wants workers of its own tries again.
SPAWN_RETRY_AFTER = 5.0

#: What a resident model counts against ``memory_budget`` at least: loading a small model
#: often grows the host by no whole page, and no model is free.
MIN_MODEL_BYTES = 64 * 1024

RESIDENT, LOADING, EVICTED = "resident", "loading", "evicted"


class ProcessPool(ModelPool):
    """One model's elastic group of worker processes (see the module docstring)."""

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
        self.spec = worker_spec(settings, entry, server, uri=uri, threads=settings.thread_cap(server))
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
        self._spawning: set[int] = set()
        self._retiring: set[int] = set()
        self._host: Host | None = None
        self._slot = 0
        self._parked: list[Pending] = []
        self._held: BatchHolder[Connection] = BatchHolder(
            self.hold,
            settings.max_batch_time,
            self.dispatch.cores,
            ready=self._ready,
            cheap=lambda: self._cheap,
            send=self._send_held,
            settled=self._settled,
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
        self._closing = False
        self._nice = 0
        self._background_wanted = False
        self.metadata = declared_metadata(settings)

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

    async def _bring_in(self) -> None:
        """Load the model into its runtime's host (the one place it is loaded from)."""
        self.state = LOADING
        started = time.perf_counter()
        try:
            host = await self._templates.host(self.spec.import_path)
            slot = self._templates.new_slot()
            loaded = await host.load(slot, self.spec, self._host_lost, self._host_stalled)
            if not host.alive:
                # It died after it answered, in the same turn of the loop: its death was told
                # to this pool (as a listener) before the pool held it, so it must not hold it
                # now, or its requests would go to a dead host for good (issue 20).
                raise WorkerDied(f"model {self.name!r}: its host process exited while it loaded the model")
        except WorkerDied:  # the host died (or was killed) during the load: not the model's fault
            self.state = EVICTED
            raise
        except RuntimeCoreError as exc:
            self.state = EVICTED
            raise ModelLoadError(exc.message, model=self.name) from exc
        except BaseException:
            self.state = EVICTED
            raise
        if self._closing:
            host.forget(slot)
            self.state = EVICTED
            return
        self._host, self._slot = host, slot
        self.metadata = loaded.metadata
        self.memory = max(loaded.memory, self.uri_size, MIN_MODEL_BYTES)
        self.state = RESIDENT
        self._residency.loaded(self, time.perf_counter() - started)

    def _start_bring_in(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loading is None or self._loading.done():
            self._load_started = loop.time()
            self._loading = loop.create_task(self._bring_back())
        elif loop.time() - self._load_started > self.server.worker_timeout:
            # The load is overdue: a request that comes for it now fails at once instead of
            # waiting worker_timeout more, and so does each one queued behind it (capacity 1),
            # one per turn of the loop (failing frees capacity, and the scheduler submits the
            # next from inside the failure: not here, or the queue would recurse).
            loop.call_soon(self.expire_parked, loop.time())

    async def _bring_back(self) -> None:
        try:
            await self._bring_in()
        except Exception as exc:
            # Failing a request frees capacity, and the scheduler submits the next one at once,
            # from inside this task: it must start a load of its own. While this task still
            # counted as loading, that request was parked with no load to wait for, and the
            # model's queue behind it hung for good (issue 20, the churn hang).
            self._loading = None
            if isinstance(exc, WorkerDied) and not self._closing:
                self._reload_parked()
                return
            error = exc if isinstance(exc, RuntimeCoreError) else ModelLoadError(str(exc), model=self.name)
            log.error("model %r (%s): could not load it: %s", self.name, self.settings.path, error)
            for pending in self._take_parked():
                self._fail(pending, error)
            return
        self._loading = None
        self._flush_parked()

    def _flush_parked(self) -> None:
        """Send the parked requests where they can run now (or park them again)."""
        for pending in self._take_parked():
            self._dispatch(pending)
        self.on_capacity()

    def _park(self, pending: Pending) -> None:
        """Keep a request here until its model is loaded or has a worker of its own; its
        deadline is kept meanwhile."""
        self._parked.append(pending)
        deadline = pending.envelope.deadline
        if deadline:
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + max(0.0, deadline - time.time()), self._expire, pending)

    def _reload_parked(self) -> None:
        """The host died during the load: each parked request waits for a load into a fresh
        host once; one that was already retried fails with a clean 503."""
        again = []
        for pending in self._take_parked():
            if pending.retried:
                self._fail(pending, WorkerDied(f"model {self.name!r}: its host process exited while loading it"))
            else:
                pending.retried = True
                again.append(pending)
        if again:
            self._parked[:0] = again  # before any request parked meanwhile: they came first
            self._start_bring_in()

    def expire_parked(self, now: float) -> None:
        """Fail with 503 the requests that have waited for a load longer than ``worker_timeout``
        (the supervisor calls this): whatever happens to loads and hosts, no request waits
        unanswered for longer (issue 20)."""
        limit = self.server.worker_timeout
        loading = self._loading is not None and not self._loading.done()
        overdue = loading and now - self._load_started > limit
        late = [p for p in self._parked if overdue or now - p.sent_at > limit]
        for pending in late:
            self._parked.remove(pending)
            if pending.future.done():
                self._inflight -= 1
            else:
                self._fail(pending, ModelNotReady(
                    f"model {self.name!r}: it could not be loaded within worker_timeout ({limit:g} s)",
                    model=self.name,
                ))

    def _take_parked(self) -> list[Pending]:
        parked, self._parked = self._parked, []
        live = []
        for pending in parked:
            if pending.future.done():
                self._inflight -= 1
            else:
                live.append(pending)
        return live

    def evict(self) -> None:
        """Give up the resident state: unload from the host, retire dedicated workers. Only
        called while nothing is in flight."""
        if self.state is not RESIDENT or self._host is None:
            return
        host = self._host
        host.forget(self._slot)
        self._host, self._slot = None, 0
        self._templates.release(host)
        self.state = EVICTED
        for conn in self._workers:
            if conn is not None and conn.ready:
                self._retire(conn)
        self._residency.dropped(self)

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
                # leave it, the same worker (``batching.room``). Held here, at 32 connections on
                # 2 workers, they had 1.04x coalescing's p99 (median of 15 paired windows).
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

    def _expire(self, pending: Pending) -> None:
        if pending in self._parked and not pending.future.done():
            self._parked.remove(pending)
            self._fail(
                pending,
                DeadlineExceeded(f"model {self.name!r}: the request's deadline passed while the model was loading"),
            )

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

    # ------------------------------------------------------------------ isolation

    @property
    def _wants_own_workers(self) -> bool:
        """Its requests are too long for the shared host (``HOST_COST_LIMIT``), or one of its
        calls stalled the host: they run on workers of its own."""
        return (self._stalled_host or self._service >= HOST_COST_LIMIT) and not self._closing

    def _start_own_worker(self) -> bool:
        """Make sure a worker of its own is on its way; False when none can be (every slot
        taken, the model is not resident, or the last start failed: the host serves then)."""
        if self._spawning:
            return True
        if self.state is not RESIDENT or self._spawn_failed_recently:
            return False
        free = next((i for i, c in enumerate(self._workers) if c is None or not c.alive), None)
        if free is None:
            return False
        self._background(self._spawn(free))
        return True

    @property
    def _spawn_failed_recently(self) -> bool:
        """A worker failed to start in the last ``SPAWN_RETRY_AFTER`` seconds: the host serves
        the model meanwhile rather than have its requests wait for starts that fail."""
        return asyncio.get_running_loop().time() - self._spawn_failed_at < SPAWN_RETRY_AFTER

    def _observe(self, outcome: Outcome) -> None:
        # Seeded with the first measurement: a mean that starts from zero would take several
        # long calls on the shared host before it crossed HOST_COST_LIMIT.
        if self._service == 0.0:
            self._service = outcome.cpu
        else:
            self._service += 0.1 * (outcome.cpu - self._service)
        self._stalled_host = False  # measured now

    def _host_stalled(self, host: Host, culprit: bool) -> None:
        """``host`` has answered nothing for a while with requests of this model waiting."""
        if culprit:
            self._stalled_host = True  # its next requests go to workers of its own
        else:
            self.move_off(host, "its host was stalled")

    @property
    def host(self) -> Host | None:
        """The host holding the model while it is resident."""
        return self._host

    def move_off(self, host: Host, why: str) -> None:
        """Start moving to another host of the runtime, if the model is resident on ``host``."""
        if host is self._host and self.state is RESIDENT and not self._closing:
            if self._moving is None or self._moving.done():
                self._moving = asyncio.get_running_loop().create_task(self._move(host, why))

    async def _move(self, stalled: Host, why: str) -> None:
        """Load the model into a sibling host that is not stalled, send it the requests that
        wait in ``stalled`` (their replies from there, if any come, are dropped), and leave."""
        try:
            host = await self._templates.host(self.spec.import_path, avoid=stalled)
            if host is stalled or self._host is not stalled:
                return
            slot = self._templates.new_slot()
            loaded = await host.load(slot, self.spec, self._host_lost, self._host_stalled)
        except (RuntimeCoreError, OSError) as exc:
            log.warning("model %r: could not move to another host (%s): %s", self.name, why, exc)
            return
        if self._closing or self._host is not stalled or not host.alive:
            host.forget(slot)  # evicted, unloaded or moved meanwhile
            return
        old_slot = self._slot
        self._host, self._slot = host, slot
        self.metadata = loaded.metadata
        self._residency.resized(self, max(loaded.memory, self.uri_size, MIN_MODEL_BYTES))
        stalled.forget(old_slot)
        if stalled.conn is not None:
            waiting = [(rid, p) for rid, p in stalled.conn.pending.items() if p.owner is self]
            for rid, pending in waiting:
                del stalled.conn.pending[rid]
                pending.slot = slot
                host.submit(pending)
        log.info("model %r moved to another host (pid %d): %s", self.name, host.pid, why)
        self._templates.release(stalled)

    # ------------------------------------------------------------------ elasticity

    def _maybe_scale_up(self) -> None:
        if self._closing or self.state is not RESIDENT:
            return
        if not self._spawning and not any(self._workers):
            # Served by the host alone (the common case with many models): its requests must
            # have piled up for a while (see SCALE_UP_TAU), not for a moment.
            threshold = min(SCALE_UP_AT, self.dispatch.per_worker)
            if self._inflight < threshold or self._load < SCALE_UP_SHARE * threshold:
                return
        live = sum(1 for c in self._workers if c is not None and c.alive) + len(self._spawning)
        if live >= self.max_workers:
            return
        ready = len(self._ready())
        if ready:  # every worker busy, and requests waiting behind them
            wanted = self._inflight >= min(self.capacity, 2 * (ready + len(self._spawning)))
        else:  # the host holds as many of its requests as it may, or SCALE_UP_AT
            wanted = self._inflight >= min(SCALE_UP_AT, self.capacity) and not self._spawning
        if wanted:
            free = (i for i, c in enumerate(self._workers) if (c is None or not c.alive) and i not in self._spawning)
            self._background(self._spawn(next(free)))

    def _average_load(self, now: float) -> None:
        """Bring the mean in flight up to ``now`` (called before ``_inflight`` changes: it held
        its value since the last call)."""
        decay = math.exp((self._load_at - now) / SCALE_UP_TAU)
        self._load = self._inflight + (self._load - self._inflight) * decay
        self._load_at = now

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._group.background(coro)

    async def _spawn(self, index: int) -> None:
        if index in self._spawning or self._closing:
            return
        self._spawning.add(index)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            if self.state is not RESIDENT:
                await self._bring_in()
            host = self._host
            if host is None:
                return
            sock, pid = await host.spawn(self._slot, index)
            if not pid:
                sock.close()
                self._spawn_failed_at = loop.time()
                return
            conn = Connection(index, self._worker_lost)
            await loop.connect_accepted_socket(lambda: conn, sock)
            conn.pid = pid
            self._workers[index] = conn
            hello = await asyncio.wait_for(conn.hello, self.server.startup_timeout)
            error = self._group.load_error(hello)
            if error is not None:
                conn.kill()
                log.error("model %r: worker %d failed to load: %s", self.name, index, error)
                self._spawn_failed_at = loop.time()
                return
            if self._closing:
                conn.write(control_frame(0, Unload()))
                return
            conn.ready = True
            conn.last_used = loop.time()
            if self._nice or self._wants_own_workers:
                self._apply_nice(conn)
            if self._background_wanted:
                self._apply_priority(conn, True)
            self._residency.spawned(self, time.perf_counter() - started)
            self._held.on_room()  # held while no worker had room: this one may have
        except (RuntimeCoreError, OSError, TimeoutError) as exc:
            log.warning("model %r: could not start worker %d: %s", self.name, index, exc)
            self._spawn_failed_at = loop.time()
        finally:
            self._spawning.discard(index)
            if self._parked and self.state is RESIDENT and not self._closing:
                self._flush_parked()  # to the new worker, or to the host if it failed
            else:
                self.on_capacity()

    def retire_idle(self, now: float) -> None:
        """Retire dedicated workers idle for ``worker_idle_timeout``, down to ``min_workers``."""
        ready = self._ready()
        for conn in reversed(ready):
            if len(ready) <= self.min_workers:
                return
            if not conn.pending and now - conn.last_used >= self.idle_timeout:
                self._retire(conn)
                ready.remove(conn)

    def _retire(self, conn: Connection) -> None:
        conn.ready = False
        self._retiring.add(id(conn))
        conn.write(control_frame(0, Unload()))
        self._residency.retired()

    @property
    def has_workers(self) -> bool:
        return self._group.has_live

    def check_hangs(self, now: float) -> None:
        """Kill a worker whose oldest request ran past ``worker_timeout``, or that left a
        heartbeat unanswered for ``HEARTBEAT_TIMEOUT`` while idle (stopped, or stuck outside
        any request); mark a worker whose oldest request is overdue, so that dispatch
        prefers its siblings."""
        for conn in self._workers:
            if conn is None or not conn.alive:
                continue
            if self._group.watch(now, conn, f"worker {conn.index} (pid {conn.pid})"):
                conn.kill()

    # ------------------------------------------------------------------ failures

    def _worker_lost(self, conn: Connection) -> None:
        retiring = id(conn) in self._retiring
        self._retiring.discard(id(conn))
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

    def _host_lost(self, host: Host, orphans: list[Pending]) -> None:
        if self._host is host:
            self._host, self._slot = None, 0
            if self.state is RESIDENT:
                self._residency.dropped(self)
            self.state = EVICTED
            if not self._closing:
                self._restarts += 1
        timed_out = host.conn.timed_out if host.conn is not None else set()
        self._requeue(orphans, host.conn, timed_out)
        if self._parked and not self._closing:
            self._start_bring_in()
        self.on_capacity()

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

    # ------------------------------------------------------------------ health & CPU

    def health(self) -> PoolHealth:
        # A readiness probe, or the index, is where a stopped host is found while no request
        # wakes the supervisor: killed here, its models load into a new host on their next
        # request, with no timer running on an idle server (issue 20).
        host = self._host
        serving = host is None or not host.kill_if_stopped()
        return PoolHealth(
            workers=self.max_workers,
            ready=len(self._ready()),
            restarts=self._restarts,
            residency=self.state,
            serving=serving,
        )

    def set_nice(self, nice: int) -> None:
        self._nice = nice
        for conn in self._ready():
            self._apply_nice(conn)

    def _apply_nice(self, conn: Connection) -> None:
        # A costly model's workers yield to the hosts and the main process: a cheap model's
        # request, woken on a busy machine, then waits for no forest call's time slice. Busy
        # costly models keep their weights' ratio among themselves (the same offset for all).
        nice = min(19, self._nice + (COSTLY_NICE if self._wants_own_workers else 0))
        try:
            os.setpriority(os.PRIO_PROCESS, conn.pid, nice)
        except OSError:  # lowering nice needs CAP_SYS_NICE: keep what we have
            log.debug("model %r: cannot set nice %d on worker %d", self.name, nice, conn.pid)

    def set_background(self, background: bool) -> bool:
        self._background_wanted = background
        applied = True
        for conn in self._ready():
            if conn.background != background:
                applied = self._apply_priority(conn, background) and applied
        return applied

    def _apply_priority(self, conn: Connection, background: bool) -> bool:
        policy = os.SCHED_IDLE if background else os.SCHED_OTHER
        try:
            os.sched_setscheduler(conn.pid, policy, os.sched_param(0))
        except (OSError, AttributeError):
            return False
        conn.background = background
        return True

