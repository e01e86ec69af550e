"""Main-side handle of one runtime's host process (:class:`Host`).

See :mod:`runtime_core.host` for what runs inside it. :class:`~runtime_core.pools.templates.Templates`
starts one per runtime on first use (forked by the root, :mod:`runtime_core.pools.root`, or
as a fresh interpreter), and replaces a host that died.

Bounds and failures:

* a host serves the requests of models that have no dedicated worker; how many of a
  model's requests it holds at once is bounded by that model's pool;
* loads, unloads and forks are commands on the host's control socket, answered in
  order; each waits at most ``startup_timeout``;
* a host that dies (any signal) fails nothing by itself: its listeners (the pools of its
  models) get the requests it held, retry or fail them, and mark their models evicted,
  so the next request loads them into a new host; a request no listener takes (its model
  was unloaded meanwhile) fails with 503. Each death is logged at WARNING with its signal
  or exit code: the root, which reaps the hosts it forked, reports ``HostExited``;
* a host found stopped (``SIGSTOP``: state ``T`` in ``/proc/<pid>/stat``) is killed, by
  the supervisor while any model is active or by a readiness probe, then as above;
* a host that has requests but has answered nothing for ``host_stall_after`` seconds is
  *stalled* (one of its models is running a long call, or it hangs): each model with
  requests waiting behind that call is told, and moves to a sibling host of the same
  runtime (started from the root when none is free, at most ``MAX_HOSTS`` per runtime),
  so that no model waits for another one's call; the model whose call it is is told too,
  and gets workers of its own. A sibling left with no model is stopped;
* ``aclose`` stops the hosts, then the root; no process outlives the server.
"""

from __future__ import annotations

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
from typing import Any, Protocol

from runtime_core.control import (
    ForkHost,
    HostReady,
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    SpawnWorker,
    Stop,
    UnloadModel,
    WorkerExited,
    WorkerSpawned,
)
from runtime_core.errors import ModelLoadError, WorkerDied
from runtime_core.hostanswers import HOLD
from runtime_core.plugins import import_runtime
from runtime_core.pools.connection import Connection, Pending
from runtime_core.pools.root import (
    CLOSED,
    TEMPLATE_POPEN_ARGS,
    Root,
    cpu_wait_ns,
    exit_text,
    is_stopped,
    pid_alive,
    read_event,
    resident_bytes,
    template_env,
)
from runtime_core.spec import WorkerSpec

log = logging.getLogger("runtime_core.pools")


class HostClient(Protocol):
    """A model's pool, as its host tells it what befalls the host. A host keeps its clients
    themselves, not two bound methods of each (0.2 KB a model at ten thousand, issue 23)."""

    def host_lost(self, host: Host, orphans: list[Pending]) -> None:
        """The host died; ``orphans`` are the requests of this model it held."""

    def host_stalled(self, host: Host, culprit: bool) -> None:
        """The host stalled with requests of this model waiting; ``culprit``: the call it is
        stuck in is this model's own."""


#: Seconds a host with requests may stay silent before it counts as stalled (the
#: ``host_stall_after`` setting's default). Longer than any call a model may make on a shared
#: host (see ``HOST_COST_LIMIT`` in ``process.py``, a few times over), short beside the
#: latency a client notices.
STALL_AFTER = 0.05
#: Most hosts per runtime: the first, and siblings started while others were stalled.
MAX_HOSTS = 4


class Host:
    """Main-side handle of one runtime's host process."""

    def __init__(
        self,
        import_path: str,
        log_level: str,
        timeout: float,
        stall_after: float = STALL_AFTER,
        answer_hold: float = HOLD,
    ) -> None:
        self.import_path = import_path
        self.log_level = log_level
        self.timeout = timeout
        self.stall_after = stall_after
        self.answer_hold = answer_hold  # host_answer_hold, passed to the process
        try:  # for log lines and errors: a runtime's name, never its import path
            self.runtime = import_runtime(import_path).name
        except Exception:
            self.runtime = import_path.rpartition(":")[2]
        self.pid = 0
        self.alive = False
        self.killed = False  # killed by the server (stopped, or overdue), not yet known dead
        self.stopping = False  # stopped by the server on purpose: its exit is no fault
        self.conn: Connection | None = None
        self.listeners: dict[int, HostClient] = {}  # slot -> its pool, told of a death or a stall
        self._busy_since = 0.0  # loop time the host last went from no request to some
        self._wait_mark = (0.0, 0)  # (loop time, its CPU-wait ns then): see _starved
        self.baseline = 0  # its resident set size when it became ready: the runtime, no model
        #: Being replaced (its memory drifted past the budget): no model is sent to it any more.
        self.retiring = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._ready: asyncio.Future[HostReady] | None = None
        self._loads: dict[int, asyncio.Future[ModelLoaded]] = {}
        self._spawns: dict[tuple[int, int], asyncio.Future[int]] = {}
        self._state_at = -1.0  # monotonic time of the last read of /proc/<pid>/stat, and its answer
        self._stopped = False
        self._exit_task: asyncio.Task[None] | None = None

    @property
    def forked_by_root(self) -> bool:
        """The root forked it and reaps it (and reports its exit), not the main process."""
        return bool(self.pid) and self._proc is None

    async def start(self, root: Root | None) -> None:
        loop = asyncio.get_running_loop()
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        data, data_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if root is not None:
                self.pid = await root.fork(
                    ForkHost(self.import_path, self.log_level, os.getpid(), self.answer_hold),
                    [ctl_child.fileno(), data_child.fileno()],
                )
            else:
                fds = [ctl_child.fileno(), data_child.fileno()]
                self._proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "runtime_core.host",
                        "--host",
                        str(fds[0]),
                        str(fds[1]),
                        str(os.getpid()),
                        self.import_path,
                        self.log_level,
                        repr(self.answer_hold),
                    ],
                    pass_fds=fds,
                    env=template_env(),
                    **TEMPLATE_POPEN_ARGS,
                )
                self.pid = self._proc.pid
        finally:
            ctl_child.close()
            data_child.close()
        ctl.setblocking(False)
        self._ctl = ctl
        self._ready = loop.create_future()
        loop.add_reader(ctl.fileno(), self._read_control)
        conn = Connection(-1, self._data_lost)
        conn.hello.set_result(HostReady(self.pid))  # a host says so on its control socket, not here
        await loop.connect_accepted_socket(lambda: conn, data)
        conn.pid = self.pid
        self.conn = conn
        self.alive = True
        try:
            await asyncio.wait_for(self._ready, self.timeout)
        except TimeoutError:
            self.kill()
            raise ModelLoadError("the runtime's host process did not start") from None
        self.baseline = resident_bytes(self.pid)

    def grown(self) -> int:
        """Bytes of memory the host holds beyond what it held when it started (its resident
        set size): the models it holds, and what loading and unloading left behind."""
        return max(0, resident_bytes(self.pid) - self.baseline) if self.alive else 0

    # ------------------------------------------------------------------ control socket

    def _read_control(self) -> None:
        assert self._ctl is not None
        event = read_event(self._ctl, 1 << 20)
        if event is None:
            return
        if event is CLOSED:
            self._died()
            return
        if isinstance(event, HostReady):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(event)
        elif isinstance(event, ModelLoaded | ModelLoadFailed):
            fut = self._loads.pop(event.slot, None)
            if fut is not None and not fut.done():
                if isinstance(event, ModelLoaded):
                    fut.set_result(event)
                else:
                    fut.set_exception(ModelLoadError(event.error))
        elif isinstance(event, WorkerSpawned):
            spawned = self._spawns.pop((event.slot, event.index), None)
            if spawned is not None and not spawned.done():
                spawned.set_result(event.pid)
        elif isinstance(event, WorkerExited) and os.WIFSIGNALED(event.status):
            log.debug(
                "a worker (pid %d) of %s was killed by signal %d",
                event.pid,
                self.import_path,
                os.WTERMSIG(event.status),
            )

    def _send(self, command: Any, fds: list[int] | None = None) -> None:
        if self._ctl is None or not self.alive:
            raise WorkerDied("the runtime's host process is gone")
        data = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if fds:
                socket.send_fds(self._ctl, [data], fds)
            else:
                self._ctl.send(data)
        except OSError:
            raise WorkerDied("the runtime's host process is gone") from None

    # ------------------------------------------------------------------ commands

    async def load(self, slot: int, spec: WorkerSpec, client: HostClient) -> ModelLoaded:
        fut: asyncio.Future[ModelLoaded] = asyncio.get_running_loop().create_future()
        self._loads[slot] = fut
        self.listeners[slot] = client
        try:
            self._send(LoadModel(slot, spec))
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise ModelLoadError(f"model {spec.name!r}: loading took longer than startup_timeout") from None
        except BaseException:
            self.forget(slot)
            raise

    def forget(self, slot: int) -> None:
        """Unload ``slot`` in the host (if it is alive) and stop listening for it."""
        self.listeners.pop(slot, None)
        if self.alive:
            with contextlib.suppress(WorkerDied):
                self._send(UnloadModel(slot))

    async def spawn(self, slot: int, index: int) -> tuple[socket.socket, int]:
        """Fork a dedicated worker of ``slot``; returns the main end of its data socket and
        its pid (0: the host no longer holds the model)."""
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawns[(slot, index)] = fut
        try:
            self._send(SpawnWorker(slot, index), [worker_end.fileno()])
        except BaseException:
            self._spawns.pop((slot, index), None)
            main_end.close()
            raise
        finally:
            worker_end.close()
        try:
            pid = await asyncio.wait_for(fut, self.timeout)
        except BaseException:
            main_end.close()
            raise
        return main_end, pid

    def submit(self, pending: Pending) -> None:
        conn = self.conn
        assert conn is not None
        if not conn.pending:
            loop = asyncio.get_running_loop()
            self._busy_since = loop.time()
            if self._stall_timer is None:
                self._wait_mark = (self._busy_since, cpu_wait_ns(self.pid))
                self._stall_timer = loop.call_later(self.stall_after, self._check_stall)
        conn.send(pending)

    # ------------------------------------------------------------------ stalls

    def quiet_for(self, now: float) -> float:
        """Seconds the host has had requests and answered nothing (0 while it has none)."""
        conn = self.conn
        if conn is None or not conn.pending:
            return 0.0
        return now - max(self._busy_since, conn.last_heard)

    @property
    def stalled(self) -> bool:
        return self.quiet_for(asyncio.get_running_loop().time()) >= self.stall_after

    def _check_stall(self) -> None:
        """One timer per busy spell: tells the models waiting on a stalled host, then looks
        again every ``stall_after`` while it stays stalled (a model that sends its first
        request to it meanwhile is told at the next look)."""
        self._stall_timer = None
        conn = self.conn
        if conn is None or not conn.pending or not self.alive:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet = self.quiet_for(now)
        if quiet >= self.stall_after and self._starved(now):
            quiet = 0.0  # short of CPU, not stuck: its models would be no better off elsewhere
        elif quiet >= self.stall_after:
            # The oldest request is the call it is stuck in, unless it is loading a model (loads
            # and requests share the host's one thread): then no model's call is to blame.
            culprit = next(iter(conn.pending.values())).slot if not self._loads else -1
            for slot in {p.slot for p in conn.pending.values()}:
                client = self.listeners.get(slot)
                if client is not None:
                    client.host_stalled(self, slot == culprit)
            quiet = 0.0
        if conn.pending and self.alive:
            self._stall_timer = loop.call_later(self.stall_after - quiet, self._check_stall)

    def _starved(self, now: float) -> bool:
        """The host spent most of the time since the last look waiting for a CPU (its
        schedstat run-queue wait): a machine short of cores, not a call it is stuck in."""
        then, waited = self._wait_mark
        waited_now = cpu_wait_ns(self.pid)
        self._wait_mark = (now, waited_now)
        return now > then and (waited_now - waited) / 1e9 >= 0.5 * (now - then)

    @property
    def idle(self) -> bool:
        """Holds no model and runs no request: a sibling in this state can be stopped."""
        return not self.listeners and not self._loads and (self.conn is None or not self.conn.pending)

    # ------------------------------------------------------------------ death

    def _data_lost(self, conn: Connection) -> None:
        self._died()

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        loop = asyncio.get_running_loop()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._ctl is not None:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._ctl = None
        error = WorkerDied(f"the host process of runtime {self.runtime!r} exited")
        waiting: list[asyncio.Future[Any]] = [*self._loads.values(), *self._spawns.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)
        self._loads.clear()
        self._spawns.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        orphans: dict[int, list[Pending]] = {}
        if self.conn is not None:
            for pending in self.conn.pending.values():
                orphans.setdefault(pending.slot, []).append(pending)
            self.conn.pending.clear()
            if self.conn.alive and self.conn.transport is not None:
                self.conn.transport.abort()
        listeners, self.listeners = self.listeners, {}
        for slot, client in listeners.items():
            client.host_lost(self, orphans.pop(slot, []))
        for lost in orphans.values():  # their model forgot this host (unloaded): nobody retries them
            for pending in lost:
                if not pending.future.done():
                    pending.future.set_exception(WorkerDied("the host process running the request exited"))
        if self._proc is not None and not self.stopping:
            self._exit_task = asyncio.get_running_loop().create_task(self._log_exit(self._proc))

    async def _log_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """A host started as a fresh interpreter is the main process's child: wait for it."""
        code = await asyncio.to_thread(proc.wait)
        self.exited(-code if code < 0 else code << 8)  # as a wait status

    def exited(self, status: int) -> None:
        """The process ended with wait status ``status``."""
        if self.stopping:
            log.debug("the host of runtime %r (pid %d) %s", self.runtime, self.pid, exit_text(status))
        else:
            log.warning(
                "the host of runtime %r (pid %d) %s; its models load into a new host on their next request",
                self.runtime,
                self.pid,
                exit_text(status),
            )

    def stopped(self) -> bool:
        """The process is stopped (``SIGSTOP``, or traced): it will answer nothing until it is
        continued. Read from ``/proc`` at most once per 0.1 s (readiness probes and the index
        ask for every model of the host)."""
        now = time.monotonic()  # not the loop's clock: metrics may ask from another thread
        if now - self._state_at >= 0.1:
            self._state_at = now
            self._stopped = is_stopped(self.pid)
        return self._stopped

    def kill_if_stopped(self) -> bool:
        """Kill the host if it is stopped (its models then load into a new host); returns
        whether it is unusable: stopped, or killed and not yet known dead."""
        if self.alive and not self.killed and self.pid and self.stopped():
            log.error("the host of runtime %r (pid %d) is stopped; killing it", self.runtime, self.pid)
            self.kill()
        return self.alive and self.killed

    def kill(self) -> None:
        self.killed = True
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        self.stopping = True
        if self.alive:
            with contextlib.suppress(WorkerDied):
                self._send(Stop())
        self.listeners.clear()
        self._died()
        if self._proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._proc.wait), 5.0)
            except TimeoutError:
                self._proc.kill()
        elif self.pid:  # forked by the root, which reaps it
            loop = asyncio.get_running_loop()
            stop_by = loop.time() + 5.0
            while pid_alive(self.pid) and loop.time() < stop_by:
                await asyncio.sleep(0.02)
            self.kill()
