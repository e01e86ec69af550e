"""A model's workers as Ray actors, placed anywhere in a Ray cluster (``backend: ray``).

Ray places, starts, kills and watches the actors; the requests do not go through Ray calls.
Each actor opens a TCP connection back to this process and serves the framed protocol local
workers serve (:mod:`runtime_core.worker`'s serving loop), so requests take the same
:class:`~runtime_core.pools.connection.Connection` and dispatch policy as local workers::

    scheduler --submit(envelope)--> RayPool --Dispatch.pick--> Connection ==TCP==> actor
                                       ^                                            |
                                       |      REPLY frames (decode -> runtime ->    |
                                       +------------------  encode, BatchLoop) <----+

    Ray: actor placement (num_cpus, resources, strategy), ray.kill, a sentinel call per actor

The pool listens on the driver node's IP (as Ray gives it) on an ephemeral port, one
listener per pool (:mod:`runtime_core.pools.ray_listener`). An actor, once placed, connects
to it and first sends a preamble with a random token of its own (made by the pool, handed to
the actor in its constructor); a connection that sends no waiting actor's token is closed,
so no stranger can attach. Then the actor loads the model and says ``WorkerReady`` as a
local worker does. A request is one socket write and one frame read; requests that arrive
while an actor computes wait in its socket and run as one batch; a large body crosses the
network once, by TCP, with no copy into Ray's object store.

CPU priority: the threads that run the model in an actor get the nice value (by the model's
weight) and SCHED_IDLE state that a local worker of the model would get, on the actor's own
node, and Ray's Python threads in the actor (which share the GIL with them) the same nice;
Ray starts its workers at nice 15, and going below that needs CAP_SYS_NICE there (without
it, the actor keeps the lowest nice it may set). The actor's process is otherwise prepared
as a local worker's: the warning filters Ray installed are dropped before the model loads
(scikit-learn's forests re-apply every filter around each tree), and the worker loop
freezes the heap after the load (``gc.freeze``, as a host does before it forks).

Bounds: the dispatch policy's depth per ready actor (``capacity``); the scheduler never
submits past it. The listener bounds the connections that wait for their preamble. Nothing
else queues here.

Ordering: none between requests; each future completes when its actor answers.

Cancel: cancelling a submitted future does not stop the actor; its reply is dropped.

Timeout: the actor honours the envelope's wall-clock deadline before running it (as a local
worker does). A request out longer than ``worker_timeout`` gets its actor killed
(``ray.kill``, and its socket closed): that request fails with :class:`DeadlineExceeded`
(504, not retried: it may be the cause), the others are handled as on actor death, below.
An idle actor that leaves a heartbeat (a ``Ping`` frame) unanswered for
``HEARTBEAT_TIMEOUT`` is killed the same way. An actor that is placed but does not connect
and load within ``startup_timeout`` fails the model's load.

Actor death: its process's death closes its socket (noticed at once); a lost node may
leave the socket open, so each actor also has a Ray sentinel call that never returns while
it lives, and its failure closes the socket. Its in-flight requests are sent once more to
another live actor, or fail with :class:`WorkerDied` (503) if none lives or they were
already retried. A replacement actor is started with the same options (Ray places it on a
live node). The model stays READY while any actor lives.

``aclose``: waits for in-flight requests (up to ``grace``), sends each actor ``Unload``
(it unloads the model and closes its socket), kills every actor (``ray.kill``) and closes
the listener. Actors are not detached, so they also die with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Coroutine
from typing import Any

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import ModelLoadError, RuntimeCoreError
from runtime_core.plugins import RuntimeEntry
from runtime_core.pools.base import ModelPool, PoolHealth
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.ray_actor import _TOKEN_BYTES, NAMESPACE, ModelActor, connect, disconnect
from runtime_core.pools.ray_listener import ActorListener
from runtime_core.pools.workers import WorkerGroup, dispatch_for
from runtime_core.settings import ModelSettings, ServerSettings
from runtime_core.spec import worker_spec

__all__ = ["NAMESPACE", "ModelActor", "RayPool", "connect", "disconnect"]

log = logging.getLogger("runtime_core.pools.ray")

#: Seconds an actor may take to unload when its model is unloaded, before it is killed.
_UNLOAD_WAIT = 5.0


class _Actor:
    """The pool's view of one actor: its Ray handle, its token, and its connection once it
    has connected."""

    __slots__ = ("conn", "handle", "index", "name", "token", "up")

    def __init__(self, handle: Any, name: str, index: int, token: bytes) -> None:
        self.handle = handle
        self.name = name
        self.index = index
        self.token = token
        self.conn: Connection | None = None
        self.up = False  # loaded and serving; False again once its connection is lost


class RayPool(ModelPool):
    """``backend: ray``: the model's ``parallel_workers`` are Ray actors. See the module docstring."""

    def __init__(
        self, settings: ModelSettings, entry: RuntimeEntry, server: ServerSettings, *, uri: str | None
    ) -> None:
        self.settings = settings
        self.name = settings.key
        self.server = server
        self.size = max(1, settings.workers(server))
        # Every actor counts as one of the "cores": they are on cores of their own nodes.
        batchable = bool(getattr(entry.cls, "supports_batching", False))
        self.dispatch = dispatch_for(batchable, server.pipeline_depth, settings.max_batch_size, self.size)
        self._group = WorkerGroup(self.name, self.size, server.worker_timeout, server.worker_overdue_after)
        threads = settings.threads or max(1, int(settings.ray.num_cpus))
        self.spec = worker_spec(settings, entry, server, uri=uri, threads=threads)
        self._actors: list[_Actor] = []
        self._restarts = 0
        self._closing = False
        self._ray: Any = None
        self._listener = ActorListener(self.name, self._background_task)
        self._nice = 0
        self._background = False
        self._priority_applied = True

    # ------------------------------------------------------------------ lifecycle

    def _new_actor(self, index: int) -> _Actor:
        name = f"{self.settings.name}/{uuid.uuid4().hex[:12]}"
        options: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "num_cpus": self.settings.ray.num_cpus,
            "scheduling_strategy": self.settings.ray.placement,
            "max_restarts": 0,  # replaced by the pool, which also retries the requests
            "max_concurrency": 16,  # Ray's methods only: start, priority, sentinel, where
        }
        if self.settings.ray.resources:
            options["resources"] = dict(self.settings.ray.resources)
        token = secrets.token_bytes(_TOKEN_BYTES)
        batch_time = self.settings.max_batch_time if self.settings.max_batch_size > 1 else 0.0
        remote = self._ray.remote(ModelActor).options(**options)
        handle = remote.remote(self.spec, index, self._listener.address, token, batch_time)
        return _Actor(handle, name, index, token)

    async def start(self) -> None:
        self._ray = await asyncio.to_thread(connect, self.server.ray_address)
        # This node's IP as Ray knows it: where the actors on other nodes reach it.
        self._listener.open(await asyncio.to_thread(self._ray.util.get_node_ip_address))
        self._actors = [self._new_actor(i) for i in range(self.size)]
        loading = asyncio.gather(*(self._bring_up(a) for a in self._actors), return_exceptions=True)
        try:
            results = await asyncio.wait_for(loading, self.server.startup_timeout)
        except TimeoutError:
            await self._stop_all()
            message = (
                f"the model's Ray actors were not all placed and loaded within startup_timeout "
                f"({self.server.startup_timeout:g} s); does the cluster have {self.size} x "
                f"num_cpus={self.settings.ray.num_cpus:g} free"
                + (f" and resources {dict(self.settings.ray.resources)}?" if self.settings.ray.resources else "?")
            )
            raise ModelLoadError(message, model=self.settings.name) from None
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._stop_all()
            raise ModelLoadError(self._load_message(errors[0]), model=self.settings.name) from errors[0]
        self._background_task(self._watchdog())

    def _load_message(self, error: BaseException) -> str:
        if isinstance(error, ModelLoadError):
            return error.message
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()[-1] if str(cause).strip() else cause.__class__.__name__
        return f"a Ray actor failed to start: {text}"

    async def _bring_up(self, actor: _Actor) -> None:
        """Wait for ``actor`` to be placed, connect back with its token and load the model."""
        loop = asyncio.get_running_loop()
        with self._listener.expecting(actor.token) as connected:
            await actor.handle.start.remote()
            sock = await connected
        conn = Connection(actor.index, lambda lost: self._lost(actor, lost))
        await loop.connect_accepted_socket(lambda: conn, sock)
        actor.conn = conn
        hello = await conn.hello
        error = self._group.load_error(hello)
        if error is not None:
            conn.kill()
            raise ModelLoadError(f"a Ray actor failed to load the model: {error}", model=self.settings.name)
        if self._closing:
            conn.kill()
            return
        self.metadata = hello.metadata
        conn.ready = True
        conn.last_used = conn.last_heard = loop.time()
        actor.up = True
        self._background_task(self._sentinel(actor))
        self._background_task(self._prioritise(actor))

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._group.background(coro)

    # ------------------------------------------------------------------ deaths

    async def _sentinel(self, actor: _Actor) -> None:
        try:
            await actor.handle.sentinel.remote()
        except Exception:
            pass
        # Dead, or its node lost (whose socket may stay open): close its connection.
        if actor.conn is not None and actor.conn.alive:
            actor.conn.kill()

    def _lost(self, actor: _Actor, conn: Connection) -> None:
        """``conn``'s socket closed: the actor died, was killed, or unloaded."""
        was_up, actor.up = actor.up, False
        with contextlib.suppress(Exception):  # unreachable is as good as dead: make sure it is
            self._ray.kill(actor.handle, no_restart=True)
        orphans = list(conn.pending.values())
        conn.pending.clear()
        self._requeue(orphans, conn)
        self.on_capacity()
        if not was_up or self._closing or actor not in self._actors:
            return
        log.warning("model %r: Ray actor %s died; replacing it", self.name, actor.name)
        self._restarts += 1
        replacement = self._new_actor(actor.index)
        self._actors[actor.index] = replacement
        self._background_task(self._replace(replacement))

    def _requeue(self, orphans: list[Pending], lost: Connection) -> None:
        def retry(pending: Pending) -> bool:
            target = self.dispatch.pick((c for c in self._ready() if c is not lost), full_ok=True)
            if target is None:
                return False
            pending.retried = True
            pending.sent_at = asyncio.get_running_loop().time()
            target.send(pending)
            return True

        def fail(pending: Pending, error: RuntimeCoreError) -> None:
            pending.future.set_exception(error)

        self._group.requeue(
            orphans, lost.timed_out, closing=self._closing, retry=retry, fail=fail, settled=lambda _: None
        )

    async def _replace(self, actor: _Actor) -> None:
        while True:
            try:
                await self._bring_up(actor)
            except Exception as exc:
                if self._closing or actor not in self._actors:
                    return
                log.error("model %r: a replacement Ray actor failed to start: %s", self.name, exc)
                self._stop(actor)
                await asyncio.sleep(1.0)  # then try again: the cluster may be short of a node
                if self._closing or actor not in self._actors:
                    return
                actor = self._actors[actor.index] = self._new_actor(actor.index)
                continue
            self.on_capacity()
            return

    def _stop(self, actor: _Actor) -> None:
        """Kill ``actor``; its lost connection (:meth:`_lost`) does the rest."""
        if actor.conn is not None and actor.conn.alive:
            actor.conn.kill()
        with contextlib.suppress(Exception):
            self._ray.kill(actor.handle, no_restart=True)

    async def _stop_all(self) -> None:
        self._closing = True
        for actor in self._actors:
            self._stop(actor)
        self._listener.close()
        self._group.cancel_background()

    async def aclose(self, grace: float = 30.0) -> None:
        await self._group.drain(grace, lambda: bool(self.inflight), poll=0.01)
        self._closing = True
        await self._group.unload(lambda: [a.conn for a in self._actors], _UNLOAD_WAIT)
        await self._stop_all()

    # ------------------------------------------------------------------ hangs

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(min(1.0, self.server.worker_timeout / 4))
            self.check_hangs(loop.time())

    def check_hangs(self, now: float) -> None:
        """Kill an actor whose oldest request ran past ``worker_timeout``, or that left a
        heartbeat unanswered for ``HEARTBEAT_TIMEOUT`` while idle; mark an actor whose oldest
        request is overdue, so that dispatch prefers its siblings. Its lost connection then
        fails that request with DeadlineExceeded, retries the others and replaces it."""
        for actor in list(self._actors):
            conn = actor.conn
            if conn is None or not actor.up or not conn.alive:
                continue
            if self._group.watch(now, conn, f"Ray actor {actor.name}"):
                self._stop(actor)

    # ------------------------------------------------------------------ CPU priority

    def set_nice(self, nice: int) -> None:
        self._nice = nice
        for actor in self._actors:
            if actor.up:
                self._background_task(self._prioritise(actor))

    def set_background(self, background: bool) -> bool:
        self._background = background
        for actor in self._actors:
            if actor.up:
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
            log.info(
                "model %r: Ray actor %s could not take nice %d%s (needs CAP_SYS_NICE on its node)",
                self.name,
                actor.name,
                self._nice,
                ", SCHED_IDLE" if self._background else "",
            )
        self._priority_applied = bool(applied)

    # ------------------------------------------------------------------ requests

    def _ready(self) -> list[Connection]:
        return [a.conn for a in self._actors if a.up and a.conn is not None and a.conn.ready]

    @property
    def capacity(self) -> int:
        return 0 if self._closing else self.dispatch.per_worker * len(self._ready())

    @property
    def inflight(self) -> int:
        return sum(len(a.conn.pending) for a in self._actors if a.conn is not None)

    @property
    def parallelism(self) -> int:
        return max(1, len(self._ready()))

    def health(self) -> PoolHealth:
        ready = 0 if self._closing else len(self._ready())
        return PoolHealth(workers=len(self._actors), ready=ready, restarts=self._restarts)

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        ready = self._ready()
        worker = self.dispatch.pick(ready) or self.dispatch.pick(ready, full_ok=True)
        if worker is None:
            future.set_exception(self._group.no_worker())
        else:
            worker.send(Pending(future, envelope, self, 0, loop.time()))
        return future

    def request_done(self, outcome: Outcome) -> None:
        self.dispatch.observe(outcome.compute)
        self.on_capacity()
