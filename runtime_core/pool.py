"""Model pools: where a model's requests run.

A :class:`ModelPool` is the small interface the scheduler uses: ``start``
(load), ``submit`` (one request, returns a future), ``capacity``/``inflight``,
``health``, ``set_background`` and ``aclose`` (drain and unload). Two
backends implement it:

* :class:`ProcessPool`: one worker group per model (see :mod:`runtime_core.worker`);
* :class:`InProcessPool`: ``parallel_workers: 0``, the same handler in the main process.

Another backend (remote actors, say) only has to implement :class:`ModelPool`.

Bounds and failure handling of :class:`ProcessPool`:

* **Dispatch** depends on the runtime and on what its requests cost (an EWMA
  of the compute time workers report):

  - *pack*, for batching runtimes (``supports_batching``) whose requests take
    under ``PACK_BELOW``: to the busiest worker that still has room
    (``BATCH_DEPTH`` in flight). A light load wakes one worker, which runs all
    that waits as one call; more workers join only as load grows.
  - *cores*, for costlier batching runtimes: to the least-busy of the first
    ``cores`` workers, up to ``BATCH_DEPTH`` each, overflowing to the others
    only when those are full. Every core gets a worker with a batch waiting,
    and no more processes than cores compete for the CPU.
  - *spread*, for runtimes that do not batch: to the least-busy worker (ties
    to the lowest index), ``pipeline_depth`` each, so one slow request never
    holds up others while a worker idles.

  The scheduler never submits past ``capacity``.
* **Worker death** (any signal, OOM, exit) shows as EOF on its socket at once.
  Its in-flight requests are sent once more to another ready worker, or fail
  with :class:`~runtime_core.errors.WorkerDied` (503) if none is ready or they
  were already retried. The zygote forks a replacement, which reloads.
* **Hangs**: a request running longer than ``worker_timeout`` gets its worker
  SIGKILLed; that request fails with :class:`~runtime_core.errors.DeadlineExceeded`
  (it is not retried: it may be the cause), the others are retried as above.
* **Cancel**: cancelling a submitted future does not stop the worker; its reply
  is dropped when it comes.
* **Zygote death**: the workers keep serving; a new zygote is started (it
  loads the model again) the next time a worker must be replaced.
* **aclose**: waits for in-flight requests (up to ``grace``), then asks each
  worker to unload and exit, then stops the zygote; processes that do not exit
  in time are killed. No process outlives the pool.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime_core import worker as worker_module
from runtime_core.errors import (
    DeadlineExceeded,
    ModelLoadError,
    ModelNotReady,
    RuntimeCoreError,
    WorkerDied,
)
from runtime_core.inference import BatchLoop, ModelHandler
from runtime_core.limits import cpu_count
from runtime_core.messages import (
    CONTROL,
    REPLY,
    Envelope,
    FrameReader,
    Outcome,
    control_frame,
    infer_frame,
    parse_reply,
)
from runtime_core.plugins import RuntimeEntry
from runtime_core.runtime import ModelMetadata, Runtime
from runtime_core.settings import ModelSettings, ServerSettings

log = logging.getLogger("runtime_core.pool")

#: Requests cheaper than this (seconds of worker compute) are packed onto busy workers.
PACK_BELOW = 0.002
#: Requests in flight per worker when packing: the largest coalesced batch.
BATCH_DEPTH = 8


@dataclass(slots=True)
class PoolHealth:
    """A snapshot for readiness, the repository index and metrics."""

    workers: int
    ready: int
    restarts: int
    pids: list[int] = field(default_factory=list)
    shared: bool = False


class ModelPool(abc.ABC):
    """Where one model's requests run. Constructors do not start processes; ``start`` does."""

    #: Called (with no arguments) whenever capacity frees up or grows; set by the scheduler.
    on_capacity: Callable[[], None] = staticmethod(lambda: None)
    metadata: ModelMetadata | None = None
    load_time: float = 0.0

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model everywhere it runs; raise :class:`ModelLoadError` on failure."""

    @abc.abstractmethod
    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        """Send one request; only called while ``inflight < capacity``."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int: ...

    @property
    @abc.abstractmethod
    def inflight(self) -> int: ...

    @property
    def parallelism(self) -> int:
        """How many requests the pool can compute at the same time (its live workers)."""
        return 1

    @abc.abstractmethod
    def health(self) -> PoolHealth: ...

    def set_background(self, background: bool) -> bool:
        """Lower (or restore) the CPU priority of the pool's workers; returns whether it applied."""
        return False

    def set_nice(self, nice: int) -> None:  # noqa: B027 - optional for backends
        """Set the workers' nice value: the kernel shares CPU among busy models by it."""

    @abc.abstractmethod
    async def aclose(self, grace: float = 30.0) -> None:
        """Finish in-flight work (up to ``grace`` seconds), unload and stop."""


class InProcessPool(ModelPool):
    """``parallel_workers: 0``: the runtime lives in the main process and runs in its event
    loop, fed by the same batch loop as a worker."""

    def __init__(self, runtime: Runtime, depth: int = 1, max_elements: int = 0) -> None:
        self._runtime = runtime
        batch = BATCH_DEPTH if getattr(runtime, "supports_batching", False) else 1
        self._depth = max(depth, runtime.settings.max_batch_size, batch)
        self._batcher = BatchLoop(
            ModelHandler(runtime, max_elements), runtime.settings.max_batch_size, runtime.settings.max_batch_time
        )
        self._runner: asyncio.Task[None] | None = None
        self._inflight = 0
        self._closing = False

    async def start(self) -> None:
        started = time.perf_counter()
        try:
            await self._runtime.load()
        except Exception as exc:
            log.debug("in-process load failed", exc_info=True)
            raise ModelLoadError(str(exc), model=self._runtime.context.model_name) from exc
        self.load_time = time.perf_counter() - started
        self.metadata = self._runtime.metadata()
        self._runner = asyncio.get_running_loop().create_task(self._batcher.run())

    @property
    def capacity(self) -> int:
        return self._depth

    @property
    def inflight(self) -> int:
        return self._inflight

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        self._inflight += 1
        future = self._batcher.submit(envelope)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        self._inflight -= 1
        self.on_capacity()

    def health(self) -> PoolHealth:
        return PoolHealth(workers=0, ready=0 if self._closing else 1, restarts=0, pids=[os.getpid()])

    async def aclose(self, grace: float = 30.0) -> None:
        self._closing = True
        deadline = time.monotonic() + grace
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._batcher.close()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner
        with contextlib.suppress(Exception):
            await self._runtime.unload()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _template_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in worker_module.THREAD_ENV_VARS:
        env[var] = "1"  # templates must stay single-threaded to fork safely
    return env


class _Root:
    """Main-side handle of one runtime's root template process."""

    def __init__(self, import_path: str, log_level: str) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "runtime_core.worker", "--root",
                str(child.fileno()), str(os.getpid()), import_path, log_level,
            ],
            pass_fds=[child.fileno()],
            env=_template_env(),
            start_new_session=True,
        )
        child.close()
        parent.setblocking(False)
        self.ctl = parent
        self.alive = True
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.waiting: list[asyncio.Future[int]] = []

    def attach(self) -> asyncio.Future[dict[str, Any]]:
        """Start reading from the root (in the running loop); the root may have been started
        before the loop, so that it imports while the main process is still starting."""
        if self.ready is None:
            loop = asyncio.get_running_loop()
            self.ready = loop.create_future()
            loop.add_reader(self.ctl.fileno(), self._read)
        return self.ready

    def _read(self) -> None:
        try:
            message = self.ctl.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        assert self.ready is not None
        if not message:
            self.alive = False
            asyncio.get_running_loop().remove_reader(self.ctl.fileno())
            if not self.ready.done():
                self.ready.set_result({"event": "root_failed", "error": "the runtime template exited"})
            for fut in self.waiting:
                if not fut.done():
                    fut.set_exception(WorkerDied("the runtime template exited"))
            self.waiting.clear()
            return
        event = pickle.loads(message)
        if not self.ready.done():
            self.ready.set_result(event)
        elif event.get("event") == "forked" and self.waiting:
            fut = self.waiting.pop(0)
            if not fut.done():
                fut.set_result(event["pid"])

    async def fork(self, spec: worker_module.WorkerSpec) -> tuple[socket.socket, int]:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        try:
            socket.send_fds(self.ctl, [pickle.dumps({"cmd": "zygote", "spec": spec})], [child.fileno()])
        except OSError:
            self.waiting.remove(fut)
            parent.close()
            raise WorkerDied("the runtime template is gone") from None
        finally:
            child.close()
        return parent, await fut

    async def aclose(self) -> None:
        if self.alive and self.ready is not None:
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.ctl.fileno())
        self.ctl.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5.0)
        except TimeoutError:
            self.proc.kill()


class Templates:
    """The root template: one process that imports every runtime in use (and the frameworks
    their ``preload`` names) once; each model's zygote is forked from it.

    One root for all runtimes, not one each: frameworks share most of their imports
    (xgboost imports scikit-learn's base when it is installed), and on a small machine two
    roots importing the same modules at once only compete for the cores. A model whose
    runtime the root did not preload imports it in its zygote, after the fork. When the
    root cannot be used (it failed, or it has threads and so must not fork), models fall
    back to zygotes started as fresh interpreters.
    """

    def __init__(self, log_level: str = "info") -> None:
        self.log_level = log_level
        self._paths: list[str] = []
        self._root_proc: _Root | None = None
        self._lock = asyncio.Lock()

    def prewarm(self, import_paths: list[str]) -> None:
        """Start the root now, preloading ``import_paths``, so that it imports while the rest
        of the server starts. Needs no event loop."""
        for path in import_paths:
            if path not in self._paths:
                self._paths.append(path)
        if self._root_proc is None and self._paths:
            self._root_proc = _Root(",".join(self._paths), self.log_level)

    async def _root(self, import_path: str) -> _Root | None:
        async with self._lock:
            if import_path not in self._paths:
                self._paths.append(import_path)
            if self._root_proc is None or not self._root_proc.alive:
                self._root_proc = _Root(",".join(self._paths), self.log_level)
            root = self._root_proc
        event = await root.attach()
        if event.get("event") != "root_ready" or not event.get("fork_safe"):
            return None
        return root if root.alive else None

    async def fork_zygote(self, spec: worker_module.WorkerSpec) -> tuple[socket.socket, int] | None:
        """A control socket to a new zygote for ``spec`` and its pid, or None to fall back."""
        root = await self._root(spec.import_path)
        if root is None:
            return None
        try:
            return await root.fork(spec)
        except WorkerDied:
            return None

    async def aclose(self) -> None:
        root, self._root_proc = self._root_proc, None
        if root is not None:
            await root.aclose()


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Outcome]
    envelope: Envelope
    sent_at: float
    retried: bool = False


class _WorkerConnection(asyncio.Protocol):
    """The main process's end of one worker's data socket."""

    def __init__(self, pool: ProcessPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid = 0
        self.ready = False
        self.alive = True
        self.reader = FrameReader()
        self.pending: dict[int, _Pending] = {}
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.background = False
        self.outbox: list[bytes] = []
        self.timed_out: set[int] = set()  # ids of requests that ran past worker_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = list(self.reader.feed(data))
        except ValueError:
            self.kill()
            return
        for kind, request_id, payload in frames:
            if kind == REPLY:
                pending = self.pending.pop(request_id, None)
                if pending is None:
                    continue
                outcome = parse_reply(payload)
                if not pending.future.done():
                    pending.future.set_result(outcome)
                self.pool._request_done(outcome.compute)
            elif kind == CONTROL:
                message = pickle.loads(payload)
                if not self.hello.done():
                    self.hello.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.ready = False
        if not self.hello.done():
            self.hello.set_exception(WorkerDied("the worker exited before it was ready"))
        self.pool._worker_lost(self)

    def send(self, request_id: int, pending: _Pending) -> None:
        self.pending[request_id] = pending
        if not self.outbox:
            # Flush once per event-loop turn: requests dispatched in the same turn reach the
            # worker in one write and one wake-up, and it can run them as one batch.
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.extend(infer_frame(request_id, pending.envelope))

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.outbox)
        self.outbox = []

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.transport is not None:
            self.transport.abort()


class ProcessPool(ModelPool):
    """A group of worker processes for one model, forked from the model's own zygote."""

    def __init__(
        self,
        settings: ModelSettings,
        entry: RuntimeEntry,
        server: ServerSettings,
        *,
        uri: str | None,
        load_limiter: asyncio.Semaphore | None = None,
        templates: Templates | None = None,
    ) -> None:
        self.settings = settings
        self.entry = entry
        self.server = server
        self.size = settings.workers(server)
        self.threads = settings.thread_cap(server)
        # A worker needs a whole batch in hand to batch it.
        self.depth = max(server.pipeline_depth, settings.max_batch_size)
        self.batch_depth = max(self.depth, BATCH_DEPTH)
        self.batchable = bool(getattr(entry.cls, "supports_batching", False))
        self.cost = 0.0  # EWMA of the compute seconds per request the workers report
        self.active = cpu_count()  # workers preferred when batching: more than cores only add switches
        self.spec = worker_module.WorkerSpec(
            settings=settings.model_dump(),
            settings_path=str(settings.path),
            import_path=entry.import_path,
            uri=uri,
            threads=self.threads,
            main_pid=os.getpid(),
            log_level=server.log_level,
            max_elements=server.max_elements,
        )
        self._limiter = load_limiter or asyncio.Semaphore(1)
        self._workers: list[_WorkerConnection | None] = [None] * self.size
        self._templates = templates
        self._zygote: subprocess.Popen[bytes] | None = None
        self._zygote_pid = 0
        self._ctl: socket.socket | None = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._next_id = 0
        self._inflight = 0
        self._restarts = 0
        self._closing = False
        self._shared = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._respawn_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        started = time.perf_counter()
        try:
            async with self._limiter:
                await self._start_zygote()
                await asyncio.gather(*(self._spawn_with_retry(i) for i in range(self.size)))
        except RuntimeCoreError as exc:
            await self.aclose(grace=0)
            raise ModelLoadError(exc.message, model=self.settings.name) from exc
        except BaseException:
            await self.aclose(grace=0)
            raise
        self.load_time = time.perf_counter() - started
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_hangs())

    async def _start_zygote(self) -> None:
        loop = asyncio.get_running_loop()
        forked = await self._templates.fork_zygote(self.spec) if self._templates is not None else None
        if forked is not None:
            parent, self._zygote_pid = forked
            self._zygote = None
        else:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._zygote = subprocess.Popen(
                [sys.executable, "-m", "runtime_core.worker", "--zygote", str(child.fileno()), str(os.getpid())],
                pass_fds=[child.fileno()],
                env=_template_env(),
                start_new_session=True,
            )
            self._zygote_pid = self._zygote.pid
            child.close()
            parent.send(pickle.dumps(self.spec, protocol=pickle.HIGHEST_PROTOCOL))
        parent.setblocking(False)
        self._ctl = parent
        self._events = asyncio.Queue()
        loop.add_reader(parent.fileno(), self._read_control, parent)
        try:
            event = await asyncio.wait_for(self._events.get(), self.server.startup_timeout)
        except TimeoutError:
            raise ModelLoadError(f"model {self.settings.name!r}: loading took longer than startup_timeout") from None
        if event["event"] != "template_ready":
            raise ModelLoadError(event.get("error") or "the model's worker template exited during load")
        self._shared = bool(event.get("shared"))

    def _read_control(self, sock: socket.socket) -> None:
        try:
            message = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._events.put_nowait({"event": "zygote_exited"})
            for fut in self._spawned.values():
                if not fut.done():
                    fut.set_exception(WorkerDied("the model's worker template exited"))
            if sock is self._ctl:
                self._ctl = None
            return
        event = pickle.loads(message)
        kind = event.get("event")
        if kind == "spawned":
            spawned = self._spawned.pop(event["index"], None)
            if spawned is not None and not spawned.done():
                spawned.set_result(event["pid"])
        elif kind == "exited":
            status = event["status"]
            if os.WIFSIGNALED(status) and not self._closing:
                log.warning(
                    "model %r: worker pid %d was killed by signal %d",
                    self.settings.name,
                    event["pid"],
                    os.WTERMSIG(status),
                )
        else:
            self._events.put_nowait(event)

    async def _spawn_with_retry(self, index: int, attempts: int = 3) -> None:
        """A worker killed before it was ready (OOM killer, an operator) is started again; a
        worker whose runtime failed to load is not (that failure is the model's)."""
        for attempt in range(attempts):
            try:
                await self._spawn(index)
                return
            except WorkerDied:
                if attempt == attempts - 1:
                    raise
                log.warning("model %r: worker %d died while starting; starting it again", self.settings.name, index)

    async def _spawn(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        if self._ctl is None:
            await self._start_zygote()
        assert self._ctl is not None
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spawned: asyncio.Future[int] = loop.create_future()
        self._spawned[index] = spawned
        try:
            socket.send_fds(self._ctl, [pickle.dumps({"cmd": "spawn", "index": index})], [worker_end.fileno()])
        finally:
            worker_end.close()
        conn = _WorkerConnection(self, index)
        await loop.connect_accepted_socket(lambda: conn, main_end)
        self._workers[index] = conn
        conn.pid = await asyncio.wait_for(spawned, self.server.startup_timeout)
        hello = await asyncio.wait_for(conn.hello, self.server.startup_timeout)
        if hello.get("event") != "ready":
            conn.kill()
            raise ModelLoadError(hello.get("error") or "the worker failed to load the model")
        conn.ready = True
        if self.metadata is None:
            self.metadata = hello.get("metadata")
        if self._nice:
            self._apply_nice(conn)
        if self._background_wanted:
            self._apply_priority(conn, True)
        self.on_capacity()

    async def aclose(self, grace: float = 30.0) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        deadline = time.monotonic() + grace
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in self._workers:
            if conn is not None and conn.alive and conn.transport is not None:
                conn.ready = False
                conn.transport.write(control_frame(0, {"cmd": "unload"}))
        stop_by = time.monotonic() + 5.0
        while any(c is not None and c.alive for c in self._workers) and time.monotonic() < stop_by:
            await asyncio.sleep(0.02)
        for conn in self._workers:
            if conn is not None and conn.alive:
                conn.kill()
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                asyncio.get_running_loop().remove_reader(self._ctl.fileno())
                self._ctl.send(pickle.dumps({"cmd": "stop"}))
            self._ctl.close()
            self._ctl = None
        if self._zygote is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._zygote.wait), 5.0)
            except TimeoutError:
                self._zygote.kill()
        elif self._zygote_pid:  # forked by a root template, which reaps it
            stop_by = time.monotonic() + 5.0
            while _alive(self._zygote_pid) and time.monotonic() < stop_by:
                await asyncio.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._zygote_pid, signal.SIGKILL)
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ requests

    @property
    def _mode(self) -> str:
        if not self.batchable:
            return "spread"
        return "pack" if self.cost < PACK_BELOW else "cores"

    @property
    def _per_worker(self) -> int:
        return self.depth if self._mode == "spread" else self.batch_depth

    @property
    def capacity(self) -> int:
        depth = self._per_worker
        return sum(depth for c in self._workers if c is not None and c.ready)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def parallelism(self) -> int:
        return max(1, sum(1 for c in self._workers if c is not None and c.ready))

    def _pick(self, exclude: _WorkerConnection | None = None) -> _WorkerConnection | None:
        mode = self._mode
        depth = self._per_worker
        best: _WorkerConnection | None = None
        best_key: tuple[int, ...] = ()
        for conn in self._workers:
            if conn is None or not conn.ready or conn is exclude or len(conn.pending) >= depth:
                continue
            load = len(conn.pending)
            if mode == "pack":
                key: tuple[int, ...] = (-load, conn.index)
            elif mode == "cores":
                key = (conn.index >= self.active, load, conn.index)
            else:
                key = (load, conn.index)
            if best is None or key < best_key:
                best, best_key = conn, key
        return best

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        conn = self._pick()
        if conn is None:
            future.set_exception(ModelNotReady(f"model {self.settings.name!r} has no ready worker"))
            return future
        self._next_id += 1
        conn.send(self._next_id, _Pending(future, envelope, time.monotonic()))
        self._inflight += 1  # only once it is really in flight: a failed send must not leak a slot
        return future

    def _request_done(self, compute: float) -> None:
        self.cost += 0.1 * (compute - self.cost)
        self._inflight -= 1
        self.on_capacity()

    def _worker_lost(self, conn: _WorkerConnection) -> None:
        orphans = list(conn.pending.values())
        conn.pending.clear()
        timed_out = conn.timed_out
        for pending in orphans:
            if pending.future.done():
                self._inflight -= 1
                continue
            if id(pending) in timed_out:
                self._inflight -= 1
                pending.future.set_exception(
                    DeadlineExceeded(
                        f"model {self.settings.name!r}: the request ran longer than worker_timeout"
                        f" ({self.server.worker_timeout:g} s); its worker was replaced"
                    )
                )
                continue
            other = None if pending.retried else self._pick(exclude=conn)
            if other is None:
                self._inflight -= 1
                pending.future.set_exception(
                    WorkerDied(f"model {self.settings.name!r}: the worker running the request died")
                )
            else:
                pending.retried = True
                self._next_id += 1
                other.send(self._next_id, pending)
        self.on_capacity()
        if not self._closing and conn.hello.done() and not conn.hello.exception():
            log.warning("model %r: worker %d (pid %d) died; replacing it", self.settings.name, conn.index, conn.pid)
            self._restarts += 1
            task = asyncio.get_running_loop().create_task(self._replace(conn.index))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, index: int) -> None:
        delay = 0.0
        while not self._closing:
            try:
                async with self._respawn_lock:
                    if self._closing:
                        return
                    await self._spawn(index)
                return
            except Exception as exc:
                delay = min(5.0, delay * 2 or 0.1)
                log.error("model %r: could not replace worker %d: %s", self.settings.name, index, exc)
                await asyncio.sleep(delay)

    async def _watch_hangs(self) -> None:
        limit = self.server.worker_timeout
        period = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in self._workers:
                if conn is None or not conn.alive or not conn.pending:
                    continue
                # Requests run in order: the oldest one is the one running.
                oldest = min(conn.pending.values(), key=lambda p: p.sent_at)
                if now - oldest.sent_at > limit:
                    log.error(
                        "model %r: worker %d (pid %d) gave no answer in %g s; killing it",
                        self.settings.name,
                        conn.index,
                        conn.pid,
                        limit,
                    )
                    conn.timed_out = {id(oldest)}
                    conn.kill()

    # ------------------------------------------------------------------ health & CPU

    def health(self) -> PoolHealth:
        live = [c for c in self._workers if c is not None and c.ready]
        return PoolHealth(
            workers=self.size,
            ready=len(live),
            restarts=self._restarts,
            pids=[c.pid for c in live],
            shared=self._shared,
        )

    _background_wanted = False

    _nice = 0

    def set_nice(self, nice: int) -> None:
        self._nice = nice
        for conn in self._workers:
            if conn is not None and conn.ready:
                self._apply_nice(conn)

    def _apply_nice(self, conn: _WorkerConnection) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, conn.pid, self._nice)
        except OSError:  # lowering nice needs CAP_SYS_NICE: keep what we have
            log.debug("model %r: cannot set nice %d on worker %d", self.settings.name, self._nice, conn.pid)

    def set_background(self, background: bool) -> bool:
        self._background_wanted = background
        applied = True
        for conn in self._workers:
            if conn is not None and conn.ready and conn.background != background:
                applied = self._apply_priority(conn, background) and applied
        return applied

    def _apply_priority(self, conn: _WorkerConnection, background: bool) -> bool:
        policy = os.SCHED_IDLE if background else os.SCHED_OTHER
        try:
            os.sched_setscheduler(conn.pid, policy, os.sched_param(0))
        except (OSError, AttributeError):
            return False
        conn.background = background
        return True
