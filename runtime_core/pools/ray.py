"""A model's workers as Ray actors, placed anywhere in a Ray cluster (``backend: ray``).

Data flow::

    scheduler --submit(envelope)--> RayPool --one call per actor per loop turn--> actor
                                       ^                                          |
                                       |   [Outcome, ...]  (BatchLoop: decode ->  |
                                       +------------------  runtime -> encode) <--+

Each actor holds one runtime instance and runs the same :class:`ModelHandler` and
:class:`BatchLoop` as a local worker, on the request bytes: the main process never decodes
a tensor. Envelopes submitted to one actor during one turn of the event loop go to it in one
remote call, with one call in flight per actor: what arrives while it is out goes with the
next (and the actor's batch loop runs a call's requests as one ``predict``). An idle actor's
next call waits up to ``_LINGER`` for as many requests as its last call answered. Ray
moves a call's arguments through its object store when they are large, so a big body is
copied once on its way to a remote node.

CPU priority: the threads that run the model in an actor get the nice value (by the model's
weight) and SCHED_IDLE state that a local worker of the model would get, on the actor's own
node; Ray starts its workers at nice 15, and going below that needs CAP_SYS_NICE there
(without it, the actor keeps the lowest nice it may set).

Bounds: at most ``depth`` requests in flight per live actor (``capacity``); the scheduler
never submits past it. Nothing else queues here.

Ordering: none between requests; each future completes when its actor answers.

Cancel: cancelling a submitted future does not stop the actor; its answer is dropped.

Timeout: the actor honours the envelope's wall-clock deadline before running it (as a local
worker does). A call whose oldest request has been out longer than ``worker_timeout`` gets
its actor killed (``ray.kill``): that request fails with :class:`DeadlineExceeded` (504, not
retried: it may be the cause), the others are handled as on actor death, below. An idle
actor that leaves a heartbeat unanswered for ``HEARTBEAT_TIMEOUT`` is killed the same way.

Actor death (its process killed, its node lost): every actor has a sentinel call that never
returns, so death is noticed even when the actor is idle. Its in-flight requests are sent
once more to another live actor, or fail with :class:`WorkerDied` (503) if none lives or
they were already retried. A replacement actor is started with the same options (Ray places
it on a live node). The model stays READY while any actor lives.

``aclose``: waits for in-flight requests (up to ``grace``), asks each actor to unload, then
kills every actor (``ray.kill``). Actors are not detached, so they also die with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.errors import DeadlineExceeded, InferenceFailed, ModelLoadError, SettingsError, WorkerDied
from runtime_core.inference import BatchLoop, ModelHandler
from runtime_core.plugins import RuntimeEntry, import_runtime
from runtime_core.pools.base import ModelPool, PoolHealth
from runtime_core.pools.dispatch import BATCH_DEPTH
from runtime_core.runtime import ModelMetadata, RuntimeContext
from runtime_core.settings import ModelSettings, ServerSettings

__all__ = ["NAMESPACE", "RayPool", "connect"]

log = logging.getLogger("runtime_core.pools.ray")

#: Ray namespace of every actor this server creates (actors are named ``<model>/<id>``).
NAMESPACE = "runtime-core"

_INSTALL_HINT = "the Ray pool backend needs Ray: pip install 'runtime-core[ray]'"

#: Remote calls in flight per actor. One: requests that arrive while an actor runs a call
#: wait here and all go in its next call, which its batch loop runs as one ``predict``. A
#: second call in flight does not join the running batch (``predict`` holds the actor's
#: event loop, so it runs as a batch of its own): measured on the 300-tree forest, two calls
#: per actor gave 1.4 requests per ``predict`` against 2.1 with one, and 28 against 19 ms
#: of CPU per request. The price of one: the actor idles one round trip per call.
_CALLS_PER_ACTOR = 1

#: Seconds an idle actor's next call may wait for as many requests as its last call
#: answered: in a closed loop those clients come back within a millisecond or so, and a
#: remote call costs 1-2 ms of CPU (driver and actor), so one full call beats a call of
#: the first arrival followed by one of the rest. It waits only while fewer have come.
_LINGER = 0.002

#: Seconds of silence after which an idle actor is sent a heartbeat, and the most it may take
#: to answer (at most ``worker_timeout``) before it is killed as stalled: as for local workers.
HEARTBEAT, HEARTBEAT_TIMEOUT = 2.0, 5.0

#: Seconds an actor may take to unload when its model is unloaded, before it is killed.
_UNLOAD_WAIT = 5.0


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
    """The body of one Ray actor: one runtime instance behind a batch loop.

    Runs in a Ray worker process; made remote by :class:`RayPool` with the model's options."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.batcher: BatchLoop | None = None
        self.runner: asyncio.Task[None] | None = None
        self.stopped: asyncio.Event | None = None  # created on the actor's event loop, in load()
        self.ray_threads: set[int] = set()  # Ray's own threads, never reniced

    async def load(self) -> tuple[ModelMetadata, float]:
        from threadpoolctl import threadpool_limits

        spec = self.spec
        # Every thread started from here on runs model code (this event-loop thread, and the
        # BLAS/OpenMP pools it starts); the ones already there are Ray's.
        self.ray_threads = _threads() - {threading.get_native_id()}
        threadpool_limits(limits=spec["threads"])
        settings = ModelSettings.model_validate(spec["settings"])
        settings._path = Path(spec["settings_path"])
        settings._folder = Path(spec["folder"])
        context = RuntimeContext(
            model_name=settings.name,
            version=settings.version,
            folder=Path(spec["folder"]),
            uri=Path(spec["uri"]) if spec["uri"] else None,
            threads=spec["threads"],
            worker_index=spec["index"],
        )
        runtime = import_runtime(spec["import_path"])(settings, context)
        started = time.perf_counter()
        await runtime.load()
        seconds = time.perf_counter() - started
        handler = ModelHandler(runtime, spec["max_elements"])
        self.batcher = BatchLoop(handler, settings.max_batch_size, settings.max_batch_time)
        self.runner = asyncio.get_running_loop().create_task(self.batcher.run())
        self.stopped = asyncio.Event()
        return runtime.metadata(), seconds

    async def infer(self, items: list[tuple[bytes, int, int, float, float, str]]) -> list[Outcome]:
        assert self.batcher is not None
        futures = [self.batcher.submit(Envelope(p, Wire(w), h, d, a, t)) for p, w, h, d, a, t in items]
        return list(await asyncio.gather(*futures))

    async def priority(self, nice: int, background: bool) -> bool:
        """Give the threads that run the model ``nice`` and, if ``background``, SCHED_IDLE (on
        this actor's node). Ray starts its workers at nice 15 (``RAY_worker_niceness``);
        a nice below that needs CAP_SYS_NICE: without it the lowest allowed is kept.
        Returns whether everything applied."""
        applied = True
        policy = os.SCHED_IDLE if background else os.SCHED_OTHER
        for tid in _threads() - self.ray_threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                applied = False
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            except OSError:
                applied = False
        return applied

    async def ping(self) -> None:
        """Answers at once if the actor's event loop is free (the pool's idle heartbeat)."""

    async def sentinel(self) -> None:
        """Never returns while the actor lives: its failure tells the pool the actor died."""
        assert self.stopped is not None
        await self.stopped.wait()

    async def unload(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            runtime = self.batcher.handler.runtime
            with contextlib.suppress(Exception):
                await runtime.unload()
        if self.stopped is not None:
            self.stopped.set()

    async def where(self) -> dict[str, Any]:
        """Where this actor runs (for tests and operators): node id and process id."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
            "policy": os.sched_getscheduler(threading.get_native_id()),
        }


def _threads() -> set[int]:
    """Native ids of this process's threads (Linux)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return {threading.get_native_id()}


class _Request:
    """One request on its way to, or in, an actor."""

    __slots__ = ("envelope", "future", "retried", "sent")

    def __init__(self, envelope: Envelope, future: asyncio.Future[Outcome], retried: bool) -> None:
        self.envelope = envelope
        self.future = future
        self.retried = retried
        self.sent = 0.0  # loop time its call left; 0 while it waits here for the actor's next call


class _Actor:
    """The pool's view of one actor."""

    __slots__ = (
        "alive", "calls", "expect", "handle", "inflight", "last_heard", "linger_until", "name", "pending",
        "ping_sent", "timed_out",
    )

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name
        self.alive = False
        self.calls = 0  # remote calls in flight
        self.inflight: dict[int, _Request] = {}
        self.pending: list[int] = []  # keys of requests waiting for the actor's next call
        self.last_heard = 0.0  # loop time of its last answer (a call or a heartbeat)
        self.ping_sent = 0.0  # loop time of the heartbeat it has not answered yet; 0: none
        self.timed_out: set[int] = set()  # the request that ran past worker_timeout, once killed
        self.expect = 0  # requests its last call answered: about as many should come back soon
        self.linger_until = 0.0  # loop time until which its next call waits for them


class RayPool(ModelPool):
    """``backend: ray``: the model's ``parallel_workers`` are Ray actors. See the module docstring."""

    def __init__(
        self, settings: ModelSettings, entry: RuntimeEntry, server: ServerSettings, *, uri: str | None
    ) -> None:
        self.settings = settings
        self.entry = entry
        self.server = server
        self.uri = uri
        self.size = max(1, settings.workers(server))
        batching = getattr(entry.cls, "supports_batching", False)
        self.depth = max(server.pipeline_depth, settings.max_batch_size, BATCH_DEPTH if batching else 1)
        self._actors: list[_Actor] = []
        self._restarts = 0
        self._closing = False
        self._next = 0
        self._flush_scheduled = False
        self._linger_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ray: Any = None
        self._nice = 0
        self._background = False
        self._priority_applied = True

    # ------------------------------------------------------------------ lifecycle

    def _spec(self, index: int) -> dict[str, Any]:
        cpus = self.settings.ray.num_cpus
        return {
            "settings": self.settings.model_dump(mode="json", by_alias=False),
            "settings_path": str(self.settings.path),
            "folder": str(self.settings.folder),
            "import_path": self.entry.import_path,
            "uri": self.uri,
            "threads": self.settings.threads or max(1, int(cpus)),
            "index": index,
            "max_elements": self.server.max_elements,
        }

    def _new_actor(self, index: int) -> _Actor:
        ray = self._ray
        name = f"{self.settings.name}/{uuid.uuid4().hex[:12]}"
        options: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "num_cpus": self.settings.ray.num_cpus,
            "scheduling_strategy": self.settings.ray.placement,
            "max_restarts": 0,  # replaced by the pool, which also retries the requests
            "max_concurrency": 1000,
        }
        if self.settings.ray.resources:
            options["resources"] = dict(self.settings.ray.resources)
        handle = ray.remote(ModelActor).options(**options).remote(self._spec(index))
        return _Actor(handle, name)

    async def _load(self, actor: _Actor) -> None:
        metadata, _seconds = await actor.handle.load.remote()
        self.metadata = metadata
        actor.alive = True
        actor.last_heard = asyncio.get_running_loop().time()
        self._background_task(self._sentinel(actor))
        self._background_task(self._prioritise(actor))

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._ray = await asyncio.to_thread(connect, self.server.ray_address)
        self._actors = [self._new_actor(i) for i in range(self.size)]
        loading = asyncio.gather(*(self._load(a) for a in self._actors), return_exceptions=True)
        try:
            results = await asyncio.wait_for(loading, self.server.startup_timeout)
        except TimeoutError:
            await self._kill_all()
            message = (
                f"the model's Ray actors were not all placed and loaded within startup_timeout "
                f"({self.server.startup_timeout:g} s); does the cluster have {self.size} x "
                f"num_cpus={self.settings.ray.num_cpus:g} free"
                + (f" and resources {dict(self.settings.ray.resources)}?" if self.settings.ray.resources else "?")
            )
            raise ModelLoadError(message, model=self.settings.name) from None
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._kill_all()
            raise ModelLoadError(self._load_message(errors[0]), model=self.settings.name) from errors[0]
        self._background_task(self._watchdog())

    def _load_message(self, error: BaseException) -> str:
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()[-1] if str(cause).strip() else cause.__class__.__name__
        return f"a Ray actor failed to load the model: {text}"

    async def _sentinel(self, actor: _Actor) -> None:
        try:
            await actor.handle.sentinel.remote()
        except Exception:
            pass
        self._died(actor)

    def _died(self, actor: _Actor) -> None:
        if not actor.alive:
            return
        actor.alive = False
        if self._closing:
            return
        log.warning("model %r: Ray actor %s died; replacing it", self.settings.name, actor.name)
        self._restarts += 1
        with contextlib.suppress(Exception):  # unreachable is as good as dead: make sure it is
            self._ray.kill(actor.handle, no_restart=True)
        orphans = list(actor.inflight.items())
        actor.inflight.clear()
        actor.pending.clear()
        for key, request in orphans:
            if request.future.done():
                continue
            if key in actor.timed_out:  # not retried: it may be the cause
                request.future.set_result(self._timed_out_outcome())
                continue
            target = None if request.retried else self._pick()
            if target is None:
                request.future.set_result(self._died_outcome())
            else:
                self._enqueue(target, request.envelope, request.future, retried=True)
        index = self._actors.index(actor)
        replacement = self._new_actor(index)
        self._actors[index] = replacement
        self._background_task(self._replace(replacement))
        self.on_capacity()

    def _died_outcome(self) -> Outcome:
        message = f"model {self.settings.name!r}: the worker running the request died"
        return Outcome(WorkerDied.code, message.encode())

    def _timed_out_outcome(self) -> Outcome:
        message = (
            f"model {self.settings.name!r}: the request ran longer than worker_timeout "
            f"({self.server.worker_timeout:g} s); its worker was replaced"
        )
        return Outcome(DeadlineExceeded.code, message.encode())

    async def _replace(self, actor: _Actor) -> None:
        try:
            await self._load(actor)
        except Exception as exc:
            if self._closing:
                return
            log.error("model %r: a replacement Ray actor failed to load: %s", self.settings.name, exc)
            with contextlib.suppress(Exception):
                self._ray.kill(actor.handle, no_restart=True)
            await asyncio.sleep(1.0)  # then try again: the cluster may be short of a node
            if not self._closing and actor in self._actors:
                index = self._actors.index(actor)
                self._actors[index] = self._new_actor(index)
                await self._replace(self._actors[index])
            return
        self.on_capacity()

    async def _kill_all(self) -> None:
        for actor in self._actors:
            actor.alive = False
            with contextlib.suppress(Exception):
                self._ray.kill(actor.handle, no_restart=True)

    async def aclose(self, grace: float = 30.0) -> None:
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._closing = True
        live = [a for a in self._actors if a.alive]
        if live:
            unloads = [a.handle.unload.remote() for a in live]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*unloads, return_exceptions=True), _UNLOAD_WAIT)
        await self._kill_all()
        for task in list(self._tasks):
            task.cancel()
        for actor in self._actors:
            for request in actor.inflight.values():
                if not request.future.done():
                    request.future.set_result(self._died_outcome())

    # ------------------------------------------------------------------ hangs

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(min(1.0, self.server.worker_timeout / 4))
            self.check_hangs(loop.time())

    def check_hangs(self, now: float) -> None:
        """Kill an actor whose oldest request in a call ran past ``worker_timeout``, or that
        left a heartbeat unanswered for ``HEARTBEAT_TIMEOUT`` while idle; :meth:`_died` then
        fails that request with DeadlineExceeded, retries the others and replaces the actor."""
        limit = self.server.worker_timeout
        for actor in list(self._actors):
            if not actor.alive:
                continue
            sent = [(request.sent, key) for key, request in actor.inflight.items() if request.sent]
            if not sent:
                if actor.ping_sent and now - actor.ping_sent > min(limit, HEARTBEAT_TIMEOUT):
                    log.error("model %r: Ray actor %s stopped answering heartbeats; killing it",
                              self.settings.name, actor.name)
                    self._died(actor)
                elif not actor.ping_sent and now - actor.last_heard > HEARTBEAT:
                    actor.ping_sent = now
                    self._background_task(self._ping(actor))
                continue
            started, key = min(sent)
            if now - started > limit:
                log.error("model %r: Ray actor %s gave no answer in %g s; killing it",
                          self.settings.name, actor.name, limit)
                actor.timed_out = {key}
                self._died(actor)

    async def _ping(self, actor: _Actor) -> None:
        try:
            await actor.handle.ping.remote()
        except Exception:
            return  # a dead actor is the sentinel's to notice
        actor.ping_sent = 0.0
        actor.last_heard = asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ CPU priority

    def set_nice(self, nice: int) -> None:
        self._nice = nice
        for actor in self._actors:
            if actor.alive:
                self._background_task(self._prioritise(actor))

    def set_background(self, background: bool) -> bool:
        self._background = background
        for actor in self._actors:
            if actor.alive:
                self._background_task(self._prioritise(actor))
        return self._priority_applied

    async def _prioritise(self, actor: _Actor) -> None:
        """Give the actor's model threads the priority a local worker of this model would
        have (on the actor's own node)."""
        try:
            applied = await actor.handle.priority.remote(self._nice, self._background)
        except Exception:
            return  # a dead actor is the sentinel's to notice
        if not applied and self._priority_applied:
            log.info("model %r: Ray actor %s could not take nice %d%s (needs CAP_SYS_NICE on its node)",
                     self.settings.name, actor.name, self._nice, ", SCHED_IDLE" if self._background else "")
        self._priority_applied = bool(applied)

    # ------------------------------------------------------------------ requests

    @property
    def capacity(self) -> int:
        return self.depth * sum(a.alive for a in self._actors)

    @property
    def inflight(self) -> int:
        return sum(len(a.inflight) for a in self._actors)

    @property
    def parallelism(self) -> int:
        return max(1, sum(a.alive for a in self._actors))

    def health(self) -> PoolHealth:
        ready = 0 if self._closing else sum(a.alive for a in self._actors)
        return PoolHealth(workers=len(self._actors), ready=ready, restarts=self._restarts)

    def _pick(self) -> _Actor | None:
        """The live actor with the fewest requests in flight (ties: round robin)."""
        live = [a for a in self._actors if a.alive and len(a.inflight) < self.depth]
        if not live:
            live = [a for a in self._actors if a.alive]
        if not live:
            return None
        self._next += 1
        start = self._next % len(live)
        ordered = live[start:] + live[:start]
        return min(ordered, key=lambda a: len(a.inflight))

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.add_done_callback(self._done)
        actor = self._pick()
        if actor is None:
            future.set_result(self._died_outcome())
        else:
            self._enqueue(actor, envelope, future, retried=False)
        return future

    def _done(self, _future: object) -> None:
        self.on_capacity()

    def _enqueue(self, actor: _Actor, envelope: Envelope, future: asyncio.Future[Outcome], *, retried: bool) -> None:
        key = id(future)
        actor.inflight[key] = _Request(envelope, future, retried)
        actor.pending.append(key)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what waits for each actor as one call."""
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        for actor in self._actors:
            if not actor.pending or not actor.alive or actor.calls >= _CALLS_PER_ACTOR:
                continue  # what waits goes with the next call, when one returns
            if len(actor.pending) < actor.expect and now < actor.linger_until:
                if not self._linger_scheduled:
                    self._linger_scheduled = True
                    loop.call_at(actor.linger_until, self._linger_done)
                continue
            actor.expect = 0
            actor.calls += 1
            keys, actor.pending = actor.pending, []
            items = []
            for key in keys:
                request = actor.inflight[key]
                request.sent = now
                envelope = request.envelope
                payload = envelope.payload if isinstance(envelope.payload, bytes) else bytes(envelope.payload)
                items.append(
                    (
                        payload,
                        int(envelope.wire),
                        envelope.header_length,
                        envelope.deadline,
                        envelope.arrived,
                        envelope.trace,
                    )
                )
            self._background_task(self._call(actor, keys, items))

    def _linger_done(self) -> None:
        self._linger_scheduled = False
        self._flush()

    async def _call(
        self, actor: _Actor, keys: list[int], items: list[tuple[bytes, int, int, float, float, str]]
    ) -> None:
        try:
            outcomes = await actor.handle.infer.remote(items)
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError):
            actor.calls = 0
            # The actor died (or its node did) with these requests on it: retry or fail them.
            self._died(actor)
            return
        except Exception as exc:  # not a death: the call itself failed (say, serialisation)
            log.error("model %r: a call to Ray actor %s failed: %s", self.settings.name, actor.name, exc)
            outcomes = [Outcome(InferenceFailed.code, b"the model failed to run the request")] * len(keys)
        actor.calls -= 1
        actor.last_heard = asyncio.get_running_loop().time()
        actor.expect = len(keys)
        actor.linger_until = actor.last_heard + _LINGER
        if actor.pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        for key, outcome in zip(keys, outcomes, strict=True):
            request = actor.inflight.pop(key, None)
            if request is not None and not request.future.done():
                request.future.set_result(outcome)
