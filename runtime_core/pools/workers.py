"""The worker group both backends share: one model's ready connections and what befalls them.

A backend (:mod:`runtime_core.pools.process`: processes forked from a host;
:mod:`runtime_core.pools.ray`: Ray actors) starts and stops the processes behind the
connections; the group holds the connections and does, the same way for both::

    pool.submit ──> Dispatch.pick(group.ready()) ──> Connection ══ socket ══> worker / actor
                                                          │ EOF (death, kill)
    pool's on_lost ──> group.requeue(orphans) ──> retry once on a sibling, or 503 / 504
    supervisor / watchdog ──> group.watch(conn) ──> kill on "silent" or "late"
    aclose ──> group.drain(...) ──> group.unload(...) ──> group.cancel_background()

Bounds: the dispatch policy's depth per ready connection (the pool's ``capacity``); nothing
queues here. Ordering: none between requests.

Failures, each message written once here (issue 22):

* a lost connection's requests: one that ran past ``worker_timeout`` fails with
  :class:`~runtime_core.errors.DeadlineExceeded` (504; not retried, it may be the cause);
  one already retried, or lost while the pool closes, with
  :class:`~runtime_core.errors.WorkerDied` (503); the others are handed to the backend's
  ``retry`` once (which may still answer that it cannot: then 503);
* a worker whose oldest request ran past ``worker_timeout``, or that left a heartbeat
  unanswered while idle, is reported by :meth:`WorkerGroup.watch` (logged at ERROR), and
  the backend kills it; its lost connection then does the rest, as above.

Cancel: a cancelled request's future is done; it is dropped (``settled``) wherever it is
found. ``aclose``: :meth:`drain` waits up to ``grace`` for what is in flight, :meth:`unload`
asks each live worker to unload and exit and kills the ones that do not in time, and
:meth:`cancel_background` stops the group's background tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from runtime_core.control import Unload, WorkerLoadFailed, WorkerReady
from runtime_core.errors import DeadlineExceeded, RuntimeCoreError, WorkerDied
from runtime_core.messages import control_frame
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.dispatch import BATCH_DEPTH, Dispatch

__all__ = ["WorkerGroup", "dispatch_for"]

log = logging.getLogger("runtime_core.pools")


def dispatch_for(batchable: bool, pipeline_depth: int, max_batch_size: int, cores: int) -> Dispatch:
    """The dispatch policy of a model's group (the same rule for both backends)."""
    depth = max(pipeline_depth, max_batch_size)
    return Dispatch(batchable, depth, max(depth, BATCH_DEPTH), cores)


#: The tasks of every group that has none, shared (an empty set is 216 bytes).
_NO_TASKS: frozenset[asyncio.Task[Any]] = frozenset()


class WorkerGroup:
    """One model's connections to its workers, by index (``None``: no worker there now)."""

    # One group per model: no instance dict, and no set of tasks until it has one (issue 23).
    __slots__ = ("name", "overdue_after", "tasks", "worker_timeout", "workers")

    def __init__(self, name: str, size: int, worker_timeout: float, overdue_after: float) -> None:
        self.name = name
        self.worker_timeout = worker_timeout
        self.overdue_after = overdue_after
        self.workers: list[Connection | None] = [None] * size
        self.tasks: set[asyncio.Task[Any]] | frozenset[asyncio.Task[Any]] = _NO_TASKS

    # ------------------------------------------------------------------ connections

    def ready(self) -> list[Connection]:
        """The connections that take requests now, by index."""
        if not any(self.workers):  # no worker at all: the common case of a host-served model
            return []
        return [c for c in self.workers if c is not None and c.ready]

    def live(self) -> list[Connection]:
        return [c for c in self.workers if c is not None and c.alive]

    @property
    def has_live(self) -> bool:
        return any(c is not None and c.alive for c in self.workers)

    # ------------------------------------------------------------------ errors, written once

    def deadline_exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"model {self.name!r}: the request ran longer than worker_timeout"
            f" ({self.worker_timeout:g} s); its worker was replaced"
        )

    def worker_died(self) -> WorkerDied:
        return WorkerDied(f"model {self.name!r}: the worker running the request died")

    def no_worker(self) -> WorkerDied:
        return WorkerDied(f"model {self.name!r}: no worker can take the request")

    @staticmethod
    def load_error(hello: Any) -> str | None:
        """What went wrong from a worker's first control message (None: it is ready)."""
        if isinstance(hello, WorkerReady):
            return None
        return hello.error if isinstance(hello, WorkerLoadFailed) else "unexpected reply"

    # ------------------------------------------------------------------ loss and hangs

    def requeue(
        self,
        orphans: Iterable[Pending],
        timed_out: set[int],
        *,
        closing: bool,
        retry: Callable[[Pending], bool],
        fail: Callable[[Pending, RuntimeCoreError], None],
        settled: Callable[[Pending], None],
    ) -> None:
        """Decide the fate of each request of a lost connection (see the module docstring).
        ``retry`` sends a request once more and returns False when nothing can take it;
        ``settled`` is told of a request whose future is already done (cancelled)."""
        for pending in orphans:
            if pending.future.done():
                settled(pending)
            elif id(pending) in timed_out:
                fail(pending, self.deadline_exceeded())
            elif pending.retried or closing or not retry(pending):
                fail(pending, self.worker_died())

    def watch(self, now: float, conn: Connection, label: str) -> bool:
        """One supervisor check of ``conn`` (worker ``label`` in log lines): True when the
        process behind it must be killed (the caller kills it)."""
        limit = self.worker_timeout
        verdict = conn.watch(now, limit, self.overdue_after)
        if verdict == "silent":
            log.error("model %r: %s stopped answering heartbeats; killing it", self.name, label)
        elif verdict == "late":
            log.error("model %r: %s gave no answer in %g s; killing it", self.name, label, limit)
        return verdict is not None

    # ------------------------------------------------------------------ background and closing

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task of the group (kept until done, cancelled on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        if not isinstance(self.tasks, set):
            self.tasks = set()
        tasks = self.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def cancel_background(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    @staticmethod
    async def drain(grace: float, busy: Callable[[], bool], poll: float = 0.02) -> None:
        """Wait while ``busy()`` (requests in flight), for ``grace`` seconds at most."""
        loop = asyncio.get_running_loop()
        stop_by = loop.time() + grace
        while busy() and loop.time() < stop_by:
            await asyncio.sleep(poll)

    @staticmethod
    async def unload(conns: Callable[[], Iterable[Connection | None]], wait: float) -> None:
        """Ask every live worker to unload and exit; kill those still alive after ``wait``."""
        for conn in conns():
            if conn is not None and conn.alive:
                conn.ready = False
                conn.write(control_frame(0, Unload()))
        loop = asyncio.get_running_loop()
        stop_by = loop.time() + wait
        while any(c is not None and c.alive for c in conns()) and loop.time() < stop_by:
            await asyncio.sleep(0.02)
        for conn in conns():
            if conn is not None and conn.alive:
                conn.kill()
