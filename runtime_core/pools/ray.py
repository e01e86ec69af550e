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
next (and the actor's batch loop runs a call's requests as one ``predict``). Ray
moves a call's arguments through its object store when they are large, so a big body is
copied once on its way to a remote node.

Bounds: at most ``depth`` requests in flight per live actor (``capacity``); the scheduler
never submits past it. Nothing else queues here.

Ordering: none between requests; each future completes when its actor answers.

Cancel: cancelling a submitted future does not stop the actor; its answer is dropped.

Timeout: the actor honours the envelope's wall-clock deadline before running it (as a local
worker does). A request running too long is not killed here: Ray has no per-call timeout
that frees the actor.

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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.errors import InferenceFailed, ModelLoadError, SettingsError, WorkerDied
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
#: remote call costs far more CPU than a local frame, and models such as a 300-tree forest
#: have a large fixed cost per ``predict``, so under load fewer, fuller calls should win;
#: in short trials up to 8 calls per actor measured no better (docs/benchmarks.md, Ray
#: backend). The price: the actor idles one round trip per call.
_CALLS_PER_ACTOR = 1

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


class ModelActor:
    """The body of one Ray actor: one runtime instance behind a batch loop.

    Runs in a Ray worker process; made remote by :class:`RayPool` with the model's options."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.batcher: BatchLoop | None = None
        self.runner: asyncio.Task[None] | None = None
        self.stopped: asyncio.Event | None = None  # created on the actor's event loop, in load()

    async def load(self) -> tuple[ModelMetadata, float]:
        from threadpoolctl import threadpool_limits

        spec = self.spec
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

    def where(self) -> dict[str, Any]:
        """Where this actor runs (for tests and operators): node id and process id."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


class _Actor:
    """The pool's view of one actor."""

    __slots__ = ("alive", "calls", "handle", "inflight", "name", "pending")

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name
        self.alive = False
        self.calls = 0  # remote calls in flight
        self.inflight: dict[int, tuple[Envelope, asyncio.Future[Outcome], bool]] = {}
        self.pending: list[int] = []


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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ray: Any = None

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
        self._watch(actor)

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

    def _load_message(self, error: BaseException) -> str:
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()[-1] if str(cause).strip() else cause.__class__.__name__
        return f"a Ray actor failed to load the model: {text}"

    def _watch(self, actor: _Actor) -> None:
        task = asyncio.get_running_loop().create_task(self._sentinel(actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        orphans = list(actor.inflight.values())
        actor.inflight.clear()
        actor.pending.clear()
        for envelope, future, retried in orphans:
            if future.done():
                continue
            target = None if retried else self._pick()
            if target is None:
                future.set_result(self._died_outcome())
            else:
                self._enqueue(target, envelope, future, retried=True)
        index = self._actors.index(actor)
        replacement = self._new_actor(index)
        self._actors[index] = replacement
        task = asyncio.get_running_loop().create_task(self._replace(replacement))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.on_capacity()

    def _died_outcome(self) -> Outcome:
        message = f"model {self.settings.name!r}: the worker running the request died"
        return Outcome(WorkerDied.code, message.encode())

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
            for _, future, _ in actor.inflight.values():
                if not future.done():
                    future.set_result(self._died_outcome())

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
        actor.inflight[key] = (envelope, future, retried)
        actor.pending.append(key)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what waits for each actor as one call."""
        self._flush_scheduled = False
        for actor in self._actors:
            if not actor.pending or not actor.alive or actor.calls >= _CALLS_PER_ACTOR:
                continue  # what waits goes with the next call, when one returns
            actor.calls += 1
            keys, actor.pending = actor.pending, []
            items = []
            for key in keys:
                envelope = actor.inflight[key][0]
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
            task = asyncio.get_running_loop().create_task(self._call(actor, keys, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        if actor.pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        for key, outcome in zip(keys, outcomes, strict=True):
            entry = actor.inflight.pop(key, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(outcome)
