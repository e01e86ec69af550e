"""Where a process-backed model lives: its host, the load that brings it back, moving off.

Part of :class:`~runtime_core.pools.process.ProcessPool` (a mixin: the pool's state is
declared in :mod:`runtime_core.pools.process`). A model is *resident* when its runtime's host
holds it loaded; evicted (:mod:`runtime_core.pools.residency`), its next request brings it back
and waits here (*parked*) with its deadline kept, as do requests whose host died. Isolation: a
model whose requests are too long for the shared host (``HOST_COST_LIMIT``), or whose call
stalled it, gets workers of its own; a model waiting behind another's call on a stalled host,
or on a host being recycled, moves to a sibling host.

Failures: a load whose host died is retried once on a fresh host for the requests that waited
for it (503 for those already retried); a request parked longer than ``worker_timeout`` fails
with 503 (``expire_parked``, from the supervisor), one whose deadline passes with 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from runtime_core.control import ModelLoaded
from runtime_core.envelope import Outcome
from runtime_core.errors import DeadlineExceeded, ModelLoadError, ModelNotReady, RuntimeCoreError, WorkerDied
from runtime_core.pools.base import COSTLY_REQUEST, ModelPool
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.host_handle import Host
from runtime_core.runtime import with_shared_strings

if TYPE_CHECKING:
    from runtime_core.pools.residency import Residency
    from runtime_core.pools.templates import Templates
    from runtime_core.settings import ModelSettings, ServerSettings
    from runtime_core.spec import WorkerSpec

log = logging.getLogger("runtime_core.pools")

#: Seconds of service per request (measured, as an exponentially weighted mean) from which a
#: model no longer runs on its runtime's shared host: its requests go to workers of its own,
#: forked when it has none (the request waits the few milliseconds a fork takes). On the host,
#: every quiet model of the runtime would wait behind each of its calls.
HOST_COST_LIMIT = COSTLY_REQUEST
#: Seconds after a failed worker start before a model that wants workers of its own tries again.
SPAWN_RETRY_AFTER = 5.0

#: What a resident model counts against ``memory_budget`` at least: loading a small model
#: often grows the host by no whole page, and no model is free.
MIN_MODEL_BYTES = 64 * 1024

RESIDENT, LOADING, EVICTED = "resident", "loading", "evicted"


class Placement(ModelPool):
    """The host side of :class:`~runtime_core.pools.process.ProcessPool` (see the module docstring)."""

    if not TYPE_CHECKING:  # (mypy would then see only these slots, and none of ProcessPool's)
        __slots__ = ()  # the pool's state is in ProcessPool's slots

    if TYPE_CHECKING:  # the pool's state and methods these use, defined in process.py and scaling.py
        name: str
        settings: ModelSettings
        server: ServerSettings
        state: str
        memory: int
        uri_size: int
        _templates: Templates
        _residency: Residency
        _workers: list[Connection | None]
        _spawning: list[int]
        _host: Host | None
        _slot: int
        _parked: list[Pending]
        _loading: asyncio.Task[None] | None
        _moving: asyncio.Task[None] | None
        _service: float
        _stalled_host: bool
        _spawn_failed_at: float
        _load_started: float
        _inflight: int
        _restarts: int
        _closing: bool

        def _dispatch(self, pending: Pending, exclude: Connection | None = None, host_ok: bool = True) -> bool: ...
        def _decided(self, decision: str) -> None: ...
        def _fail(self, pending: Pending, error: RuntimeCoreError) -> None: ...
        def _requeue(self, orphans: list[Pending], lost: Connection | None, timed_out: set[int]) -> None: ...
        def _background(self, coro: Coroutine[Any, Any, None]) -> None: ...
        def _retire(self, conn: Connection) -> None: ...
        async def _spawn(self, index: int) -> None: ...
        def request_done(self, outcome: Outcome) -> None: ...
        def check_hangs(self, now: float) -> None: ...
        def retire_idle(self, now: float) -> None: ...
        @property
        def has_workers(self) -> bool: ...
        @property
        def spec(self) -> WorkerSpec: ...
        @property
        def import_path(self) -> str: ...

    # ------------------------------------------------------------------ residency

    async def _bring_in(self) -> None:
        """Load the model into its runtime's host (the one place it is loaded from)."""
        self.state = LOADING
        started = time.perf_counter()
        try:
            host = await self._templates.host(self.import_path)
            slot = self._templates.new_slot()
            loaded = await host.load(slot, self.spec, self)
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
        self.metadata = with_shared_strings(loaded.metadata)
        self.memory = self._memory_of(loaded)
        self.state = RESIDENT
        self._residency.loaded(self, time.perf_counter() - started)

    def _memory_of(self, loaded: ModelLoaded) -> int:
        """What the model counts against ``memory_budget`` once ``loaded``: what its host grew
        by, but never less than its files' size or ``MIN_MODEL_BYTES``."""
        return max(loaded.memory, self.uri_size, MIN_MODEL_BYTES)

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
                self._fail(
                    pending,
                    ModelNotReady(
                        f"model {self.name!r}: it could not be loaded within worker_timeout ({limit:g} s)",
                        model=self.name,
                    ),
                )

    def _take_parked(self) -> list[Pending]:
        parked, self._parked = self._parked, []
        live = []
        for pending in parked:
            if pending.future.done():
                self._inflight -= 1
            else:
                live.append(pending)
        return live

    def _expire(self, pending: Pending) -> None:
        if pending in self._parked and not pending.future.done():
            self._parked.remove(pending)
            self._fail(
                pending,
                DeadlineExceeded(f"model {self.name!r}: the request's deadline passed while the model was loading"),
            )

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

    def host_stalled(self, host: Host, culprit: bool) -> None:
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
            host = await self._templates.host(self.import_path, avoid=stalled)
            if host is stalled or self._host is not stalled:
                return
            slot = self._templates.new_slot()
            loaded = await host.load(slot, self.spec, self)
        except (RuntimeCoreError, OSError) as exc:
            log.warning("model %r: could not move to another host (%s): %s", self.name, why, exc)
            return
        if self._closing or self._host is not stalled or not host.alive:
            host.forget(slot)  # evicted, unloaded or moved meanwhile
            return
        old_slot = self._slot
        self._host, self._slot = host, slot
        self.metadata = with_shared_strings(loaded.metadata)
        self._residency.resized(self, self._memory_of(loaded))
        stalled.forget(old_slot)
        if stalled.conn is not None:
            waiting = [(rid, p) for rid, p in stalled.conn.pending.items() if p.owner is self]
            for rid, pending in waiting:
                del stalled.conn.pending[rid]
                pending.slot = slot
                host.submit(pending)
        log.info("model %r moved to another host (pid %d): %s", self.name, host.pid, why)
        self._decided("moved_host")
        self._templates.release(stalled)

    def host_lost(self, host: Host, orphans: list[Pending]) -> None:
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
