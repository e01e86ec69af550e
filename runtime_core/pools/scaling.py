"""A process-backed model's dedicated workers: forked, retired, watched, prioritised.

Part of :class:`~runtime_core.pools.process.ProcessPool` (a mixin: the pool's state is
declared in :mod:`runtime_core.pools.process`). When a model's requests pile up (on the host:
``SCALE_UP_AT`` in flight, or as many as its capacity, with as many on average over the last
moments, see ``SCALE_UP_TAU``; else twice as many as it has workers), a dedicated worker is
forked from the host, which already holds the model, so it starts in milliseconds; up to
``parallel_workers``. One idle for ``worker_idle_timeout`` is retired, down to
``min_workers``. A worker that hangs is killed (:meth:`Scaling.check_hangs`, through the
worker group) and replaced like one that died. CPU priority: each worker gets the model's
nice value (plus ``COSTLY_NICE`` for a costly model) and, while the model is saturated and
others are not, ``SCHED_IDLE``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from runtime_core.control import Unload
from runtime_core.errors import RuntimeCoreError
from runtime_core.messages import control_frame
from runtime_core.pools.base import ModelPool
from runtime_core.pools.connection import Connection
from runtime_core.pools.placement import RESIDENT

if TYPE_CHECKING:
    from runtime_core.pools.batching import BatchHolder
    from runtime_core.pools.dispatch import Dispatch
    from runtime_core.pools.host_handle import Host
    from runtime_core.pools.residency import Residency
    from runtime_core.pools.workers import WorkerGroup
    from runtime_core.settings import ServerSettings

log = logging.getLogger("runtime_core.pools")

#: Requests of one model in flight on its host that make it ask for a dedicated worker...
SCALE_UP_AT = 8
#: ...once its average in flight (an exponentially weighted mean over time, with this time
#: constant in seconds) has also reached ``SCALE_UP_SHARE`` of that threshold: requests that
#: pile up for a while, not a moment's coincidence. With traffic spread over many models the
#: busiest one reaches the threshold now and then by chance; a worker of its own then costs
#: more CPU per request than the host's batches, for no gain (issue 9).
SCALE_UP_TAU = 0.5
SCALE_UP_SHARE = 0.75

#: Added to the nice value of the workers of a model over ``HOST_COST_LIMIT`` (see ``_apply_nice``).
COSTLY_NICE = 5


class Scaling(ModelPool):
    """The dedicated workers of :class:`~runtime_core.pools.process.ProcessPool` (see the module docstring)."""

    if not TYPE_CHECKING:  # (mypy would then see only these slots, and none of ProcessPool's)
        __slots__ = ()  # the pool's state is in ProcessPool's slots

    if TYPE_CHECKING:  # the pool's state and methods these use, defined in process.py and placement.py
        name: str
        server: ServerSettings
        state: str
        dispatch: Dispatch
        max_workers: int
        min_workers: int
        idle_timeout: float
        _group: WorkerGroup
        _held: BatchHolder[Connection]
        _residency: Residency
        _workers: list[Connection | None]
        _spawning: list[int]
        _retiring: list[int]
        _host: Host | None
        _slot: int
        _parked: list[Any]
        _spawn_failed_at: float
        _inflight: int
        _load: float
        _load_at: float
        _closing: bool
        _nice: int
        memory: int
        _background_wanted: bool

        @property
        def _wants_own_workers(self) -> bool: ...
        def _ready(self) -> list[Connection]: ...
        def _background(self, coro: Coroutine[Any, Any, None]) -> None: ...
        def _worker_lost(self, conn: Connection) -> None: ...
        def _decided(self, decision: str) -> None: ...
        def _flush_parked(self) -> None: ...
        async def _bring_in(self) -> None: ...
        def evict(self) -> None: ...
        def move_off(self, host: Host, why: str) -> None: ...
        def expire_parked(self, now: float) -> None: ...
        @property
        def host(self) -> Host | None: ...

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

    async def _spawn(self, index: int) -> None:
        if index in self._spawning or self._closing:
            return
        self._spawning.append(index)
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
            self._decided("worker_started")
            self._held.on_room()  # held while no worker had room: this one may have
        except (RuntimeCoreError, OSError, TimeoutError) as exc:
            log.warning("model %r: could not start worker %d: %s", self.name, index, exc)
            self._spawn_failed_at = loop.time()
        finally:
            self._spawning.remove(index)
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
        if id(conn) not in self._retiring:
            self._retiring.append(id(conn))
        conn.write(control_frame(0, Unload()))
        self._residency.retired()
        self._decided("worker_retired")

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

    # ------------------------------------------------------------------ CPU priority

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
