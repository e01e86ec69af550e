"""Which models stay loaded, and the one timer that watches every pool.

:class:`Residency` keeps the resident models in least-recently-used order with the
memory each took when it loaded (the host's growth, at least the artifact's size). When
a load takes the total past ``memory_budget``, the models idle longest give up their
resident state, oldest first; a model with requests in flight is never evicted. An
evicted model stays READY: its next request brings it back (see
:mod:`runtime_core.pools.process`). Every operation is O(1) but the eviction sweep,
which stops at the first model that frees enough.

The supervisor wakes once per ``period`` and visits only pools that have workers or
requests in flight (a set kept as requests and workers come and go, not a scan). It
kills workers and hosts whose oldest request ran past ``worker_timeout``, and hosts
found stopped (``SIGSTOP``: their models' requests would otherwise wait for
``worker_timeout``), fails with 503 the requests that waited for a load longer than
``worker_timeout``, heartbeats idle workers, and retires dedicated workers idle for
``worker_idle_timeout``. When no pool is active it does not wake at all until a request
or a worker makes one active (a pass only ever watches active pools, and the hosts'
requests belong to them), so an idle server with a thousand models runs no timer of its
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runtime_core.pools.host_handle import Host

log = logging.getLogger("runtime_core.pools")

#: How far a host's memory may grow past ``memory_budget`` before it is recycled (replaced by a
#: fresh host that loads its models again): half the budget, at least this many bytes. Loading,
#: running and unloading leave memory behind that no eviction gives back (the allocator's free
#: lists, objects a model kept alive); only a new process does. The slack also covers what a
#: host imports on its first load of a kind of model (a framework's submodules), which stays.
RECYCLE_SLACK_MIN = 64 * 1024 * 1024

#: Upper bounds (seconds) of the cold-start histogram buckets.
COLD_START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Resident(Protocol):
    """What the residency book and the supervisor need of a pool (the process backend's
    :class:`~runtime_core.pools.process.ProcessPool`): typed here so that this module does
    not import the backend that imports it (issue 22)."""

    name: str
    memory: int

    @property
    def inflight(self) -> int: ...

    @property
    def has_workers(self) -> bool: ...

    @property
    def host(self) -> Host | None: ...

    def evict(self) -> None: ...

    def move_off(self, host: Host, why: str) -> None: ...

    def check_hangs(self, now: float) -> None: ...

    def expire_parked(self, now: float) -> None: ...

    def retire_idle(self, now: float) -> None: ...


class HostBook(Protocol):
    """What residency needs of :class:`~runtime_core.pools.templates.Templates`."""

    def hosts(self) -> list[Host]: ...

    def release(self, host: Host) -> None: ...

    def kill_stopped_root(self) -> None: ...


class Residency:
    """LRU of resident models under a memory budget, and the pools' supervisor."""

    def __init__(self, budget: int, templates: HostBook, worker_timeout: float) -> None:
        self.budget = budget
        self.templates = templates
        self.worker_timeout = worker_timeout
        self.used = 0
        self._lru: OrderedDict[Resident, int] = OrderedDict()
        self._active: set[Resident] = set()  # pools with requests in flight or workers
        self.evictions = 0
        self.recycles = 0
        self.spawns = 0
        self.retirements = 0
        self.spawn_seconds = 0.0
        #: Cumulative counts per bucket of :data:`COLD_START_BUCKETS` (+ one for +Inf), and the sum.
        self.cold_starts = [0] * (len(COLD_START_BUCKETS) + 1)
        self.cold_start_seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when the first pool becomes active

    # ------------------------------------------------------------------ bookkeeping

    def add(self, pool: Resident) -> None:
        """A pool is created: the supervisor starts with the first one."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise())

    def remove(self, pool: Resident) -> None:
        self._active.discard(pool)
        self.dropped(pool)

    def touch(self, pool: Resident) -> None:
        """A request for ``pool``: it is the most recently used, and watched until idle."""
        if not self._active:
            self._wake.set()
        self._active.add(pool)
        if pool in self._lru:
            self._lru.move_to_end(pool)

    def loaded(self, pool: Resident, seconds: float) -> None:
        self._lru[pool] = pool.memory
        self.used += pool.memory
        self.cold_starts[bisect_left(COLD_START_BUCKETS, seconds)] += 1
        self.cold_start_seconds += seconds
        if self.used > self.budget:
            for victim in list(self._lru):
                if self.used <= self.budget:
                    break
                if victim is not pool and not victim.inflight:
                    victim.evict()
                    self.evictions += 1
        self.check_memory()

    @property
    def slack(self) -> int:
        """How far a host's real memory may pass what it should hold before it is recycled."""
        return max(RECYCLE_SLACK_MIN, self.budget // 2)

    def held(self) -> int:
        """Bytes the hosts really hold for their models: their growth since they started."""
        return sum(host.grown() for host in self.templates.hosts())

    def check_memory(self) -> None:
        """Recycle a host whose real memory drifted: it grew past what it should hold (its
        resident models' share of the budget: ``memory_budget``, or more while models with
        requests in flight keep it past the budget) plus ``slack``. Its models load into a
        fresh host (each served by the old one until it has moved) and the old host stops once
        it holds none. Called after each load and on supervisor passes."""
        accounted: dict[int, int] | None = None
        for host in self.templates.hosts():
            if not host.retiring:
                grown = host.grown()
                if grown <= self.budget + self.slack:
                    # Within the floor of any limit: no need to add up its models, which is
                    # O(resident models) and ran after every load (O(N^2) at start, issue 23).
                    continue
                if accounted is None:
                    accounted = {}
                    for pool, memory in self._lru.items():
                        owner = pool.host
                        if owner is not None:
                            accounted[id(owner)] = accounted.get(id(owner), 0) + memory
                limit = max(self.budget, accounted.get(id(host), 0)) + self.slack
                if grown <= limit:
                    continue
                host.retiring = True
                self.recycles += 1
                log.warning(
                    "the host of %s (pid %d) holds %d MiB beyond its start, past what its models take plus"
                    " slack (%d MiB): its models move to a fresh host",
                    host.import_path,
                    host.pid,
                    grown >> 20,
                    limit >> 20,
                )
            for pool in list(self._lru):
                pool.move_off(host, "its host is being recycled")
            self.templates.release(host)

    def resized(self, pool: Resident, memory: int) -> None:
        """``pool`` was loaded again elsewhere (it moved hosts) and now takes ``memory``."""
        if pool in self._lru:
            self.used += memory - self._lru[pool]
            self._lru[pool] = memory
        pool.memory = memory

    def dropped(self, pool: Resident) -> None:
        memory = self._lru.pop(pool, None)
        if memory is not None:
            self.used -= memory

    def spawned(self, pool: Resident, seconds: float) -> None:
        if not self._active:
            self._wake.set()
        self._active.add(pool)
        self.spawns += 1
        self.spawn_seconds += seconds

    def retired(self) -> None:
        self.retirements += 1

    @property
    def resident(self) -> int:
        return len(self._lru)

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        period = min(1.0, self.worker_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            if not self._active:
                # Nothing to watch: sleep until touch() or spawned() makes a pool active,
                # instead of an empty pass every second (idle CPU, issue 9).
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(period)
            now = loop.time()
            for pool in list(self._active):
                try:
                    pool.check_hangs(now)
                    pool.expire_parked(now)
                    pool.retire_idle(now)
                except Exception:  # one pool's trouble must not stop the watch over the others
                    log.exception("model %r: supervisor pass failed", pool.name)
                if not pool.inflight and not pool.has_workers:
                    self._active.discard(pool)
            self.check_memory()
            self.templates.kill_stopped_root()
            for host in self.templates.hosts():
                if host.kill_if_stopped():
                    continue
                conn = host.conn
                if conn is None or not conn.pending:
                    continue
                oldest = min(conn.pending.values(), key=lambda p: p.sent_at)
                if now - oldest.sent_at > self.worker_timeout:
                    log.error(
                        "the host of %s gave no answer in %g s; killing it", host.import_path, self.worker_timeout
                    )
                    conn.timed_out = {id(oldest)}
                    host.kill()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
