"""The Ray side of ``backend: ray``: joining the cluster, and the actor that serves a model.

:func:`connect` joins (or starts) Ray once per process; :class:`ModelActor` is the body of one
Ray actor, placed by :class:`~runtime_core.pools.ray.RayPool` with the model's options. The
actor connects back to its pool over TCP, sends the preamble and its token, then builds the
model's runtime (:mod:`runtime_core.spec`) and serves it with the local workers' serving loop
(:func:`runtime_core.worker.serve`) on a thread of its own; Ray's own methods (``start``,
``priority``, ``sentinel``, ``where``) run on Ray's event loop. See :mod:`runtime_core.pools.ray`
for the pool's side (listener, dispatch, requeue, hang checks, replacement).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import sys
import threading
import warnings
from typing import Any, cast

from runtime_core.errors import SettingsError
from runtime_core.processes import new_loop
from runtime_core.spec import WorkerSpec
from runtime_core.worker import serve

log = logging.getLogger("runtime_core.pools.ray")

#: Ray namespace of every actor this server creates (actors are named ``<model>/<id>``).
NAMESPACE = "runtime-core"

_INSTALL_HINT = "the Ray pool backend needs Ray: pip install 'runtime-core[ray]'"

#: What an actor sends first on its connection, followed by its token.
_PREAMBLE = b"runtime-core ray actor 1\n"
_TOKEN_BYTES = 32


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SettingsError(_INSTALL_HINT) from None
    return ray


_connecting = threading.Lock()


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (or start a local Ray instance) once per process.

    Called from a thread, on purpose: in the main thread ``ray.init`` replaces the server's
    SIGTERM handler (drain, then stop) with an immediate exit. Ray warns about not setting
    it from a thread; that warning is silenced."""
    ray = _ray()
    with _connecting:
        if not ray.is_initialized():
            quiet = logging.getLogger("ray._private.worker")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                ray.init(
                    address=address or "local",  # unset: a new local instance, never a stale one
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            finally:
                quiet.setLevel(level)
    return ray


def disconnect() -> bool:
    """Leave the Ray cluster if this process joined one (:func:`connect`); ``True`` if it had.

    Called once the server has stopped and every actor is killed. Left to Ray's own exit
    hook, the disconnect ran during interpreter teardown, where Ray's threads now and then
    aborted the process (exit status -6) after a clean stop."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    with _connecting:
        ray.shutdown()
    return True


class ModelActor:
    """The body of one Ray actor: connects back to its pool and serves one runtime instance
    with the local workers' serving loop, on a thread of its own.

    Runs in a Ray worker process; made remote by :class:`RayPool` with the model's options.
    Ray's own methods below (``start``, ``priority``, ``sentinel``, ``where``) run on Ray's
    event loop and are never held up by ``predict``."""

    def __init__(self, spec: WorkerSpec, index: int, address: tuple[str, int], token: bytes, batch_time: float) -> None:
        self.spec = spec
        self.index = index
        self.address = address
        self.token = token
        self.batch_time = batch_time
        self.ray_threads: set[int] = set()  # Ray's own threads, never reniced
        self.serving_tid = 0
        _drop_foreign_warning_filters()

    async def start(self) -> None:
        """Connect to the pool and start serving; returns once the preamble is sent (the
        load follows, and its outcome goes to the pool as a control frame)."""
        # Every thread started from here on runs model code (the serving thread, and the
        # BLAS/OpenMP pools it starts); the ones already there are Ray's.
        self.ray_threads = _threads()
        connected: concurrent.futures.Future[None] = concurrent.futures.Future()
        threading.Thread(target=self._serve, args=(connected,), name="rc-serve", daemon=True).start()
        await asyncio.wrap_future(connected)

    def _serve(self, connected: concurrent.futures.Future[None]) -> None:
        from threadpoolctl import threadpool_limits

        self.serving_tid = threading.get_native_id()
        try:
            sock = socket.create_connection(self.address, timeout=30)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_PREAMBLE + self.token)
        except OSError as exc:
            connected.set_exception(exc)
            return
        connected.set_result(None)
        threadpool_limits(limits=self.spec.threads)
        loop = new_loop()
        asyncio.set_event_loop(loop)
        try:
            serve(loop, sock, self.spec, self.index, None, self.batch_time)
        except Exception:
            log.exception("model %r: Ray actor %d stopped serving", self.spec.name, self.index)
        finally:
            sock.close()
            loop.close()

    async def priority(self, nice: int, background: bool) -> bool:
        """Give the threads that run the model ``nice`` and, if ``background``, SCHED_IDLE (on
        this actor's node). Ray starts its workers at nice 15 (``RAY_worker_niceness``);
        a nice below that needs CAP_SYS_NICE: without it the lowest allowed is kept.
        Returns whether everything applied."""
        applied = True
        policy = os.SCHED_IDLE if background else os.SCHED_OTHER
        model = _threads() - self.ray_threads
        # Ray's Python threads get the model's nice too (not SCHED_IDLE): they share the GIL
        # with the model thread, which waits for them to hand it back. Ray's main thread
        # takes it about 100 times a second; at nice 15 on a busy machine it was scheduled
        # about 200 times a second under load and spent 1.7 s of an 8 s window waiting
        # for a core (a priority inversion against the model thread).
        python = {t.native_id for t in threading.enumerate() if t.native_id is not None}
        for tid in model | python:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                applied = False
        for tid in model:
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            except OSError:
                applied = False
        return applied

    async def sentinel(self) -> None:
        """Never returns while the actor lives: its failure tells the pool the actor died."""
        await asyncio.get_running_loop().create_future()

    async def where(self) -> dict[str, Any]:
        """Where this actor runs (for tests and operators): node id, process id, the nice
        value and policy of the thread that runs the model, the nice of Ray's main thread, the
        modules of the warning classes the process's warning filters name, and how many
        objects the garbage collector leaves out (``gc.freeze``)."""
        import gc

        import ray

        tid = self.serving_tid or threading.get_native_id()
        main = threading.main_thread().native_id or tid
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, tid),
            "policy": os.sched_getscheduler(tid),
            "ray_main_nice": os.getpriority(os.PRIO_PROCESS, main),
            "warning_filters": [f[2].__module__ for f in warnings.filters],
            "frozen_objects": gc.get_freeze_count(),
        }


def _drop_foreign_warning_filters() -> None:
    """Remove the warning filters that Ray and the libraries it imports installed in this
    process (those for warning classes not built into Python), so that the actor's model sees
    the filters a local worker's would: Python's defaults, then what the runtime's own imports
    add when it loads.

    Why: scikit-learn's ensembles re-apply every warning filter of the process, one
    ``warnings.filterwarnings`` call each, around every tree of every ``predict`` (to carry
    them into joblib's workers), at a cost that grows faster than the number of filters. A
    Ray worker process starts with 7 filters more than a plain interpreter (Ray's own warning
    classes, urllib3's, requests'), which made a forest's ``predict`` measurably dearer in
    an actor than in a local worker (docs/benchmarks.md, "Ray backend"). Ray's
    warnings in this process then show as Python shows any warning (once per place)."""
    kept = [f for f in warnings.filters if f[2].__module__ == "builtins"]
    if len(kept) == len(warnings.filters):
        return
    warnings.resetwarnings()  # empties the list and invalidates the warning caches
    # The same entries, unchanged, in the same order (a list at run time; typed a Sequence).
    cast(list[Any], warnings.filters).extend(kept)


def _threads() -> set[int]:
    """Native ids of this process's threads (Linux)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return {threading.get_native_id()}
