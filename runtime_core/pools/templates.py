"""The template processes a model's workers come from: the root and the hosts of each runtime.

See :mod:`runtime_core.host` for what runs inside them, :mod:`runtime_core.pools.root` and
:mod:`runtime_core.pools.host_handle` for their main-side handles. :class:`Templates` starts
the root early (importing frameworks is the slowest part of start-up) and one :class:`Host`
per runtime on first use (siblings while one is stalled, at most ``MAX_HOSTS``), and replaces
a host that died. ``aclose`` stops the hosts, then the root; no process outlives the server.
"""

from __future__ import annotations

import asyncio
import logging

from runtime_core.control import HostExited, RootReady
from runtime_core.errors import WorkerDied
from runtime_core.hostanswers import HOLD
from runtime_core.pools.host_handle import MAX_HOSTS, STALL_AFTER, Host
from runtime_core.pools.root import Root, exit_text, is_stopped

log = logging.getLogger("runtime_core.pools")


class Templates:
    """The root template and the hosts forked from it, one per runtime.

    One root for all runtimes, not one each: frameworks share most of their imports, and
    on a small machine two roots importing the same modules at once only compete for the
    cores. When the root cannot be used (it failed, or it has threads and so must not
    fork), hosts are started as fresh interpreters.
    """

    def __init__(
        self,
        log_level: str = "info",
        timeout: float = 600.0,
        stall_after: float = STALL_AFTER,
        answer_hold: float = HOLD,
    ) -> None:
        self.log_level = log_level
        self.timeout = timeout
        self.stall_after = stall_after
        self.answer_hold = answer_hold
        self._paths: list[str] = []
        self._root_proc: Root | None = None
        self._hosts: dict[str, list[Host]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._forked: dict[int, Host] = {}  # pid -> host forked by the root, until it exits
        self._lock = asyncio.Lock()
        self._next_slot = 0

    def new_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot

    def prewarm(self, import_paths: list[str]) -> None:
        """Start the root now, preloading ``import_paths``. Needs no event loop."""
        for path in import_paths:
            if path not in self._paths:
                self._paths.append(path)
        if self._root_proc is None and self._paths:
            self._root_proc = Root(",".join(self._paths), self.log_level, self._host_exited)

    async def _root(self, import_path: str) -> Root | None:
        if import_path not in self._paths:
            self._paths.append(import_path)
        if self._root_proc is None or not self._root_proc.alive:
            self._root_proc = Root(",".join(self._paths), self.log_level, self._host_exited)
        root = self._root_proc
        # Shielded: the root's readiness is shared by every load, and a load that is cancelled
        # (its model was unloaded meanwhile) must not cancel it for the others.
        event = await asyncio.shield(root.attach())
        if not isinstance(event, RootReady) or not event.fork_safe:
            return None
        return root if root.alive else None

    async def host(self, import_path: str, avoid: Host | None = None) -> Host:
        """A live host of a runtime, started (or replaced) if need be: one that is not
        stalled where there is one. With ``avoid`` (a stalled host a model is leaving), a
        host other than it, a new sibling if none is free, or ``avoid`` itself when the
        runtime already has ``MAX_HOSTS``."""
        host = self._pick(import_path, avoid)
        if host is not None:
            return host
        async with self._lock:
            host = self._pick(import_path, avoid)
            if host is not None:
                return host
            hosts = self._hosts.setdefault(import_path, [])
            hosts[:] = [h for h in hosts if h.alive]
            # Retiring hosts do not count: they stop once their models have moved.
            if avoid is not None and sum(1 for h in hosts if not h.retiring) >= MAX_HOSTS:
                return avoid
            host = Host(import_path, self.log_level, self.timeout, self.stall_after, self.answer_hold)
            root = await self._root(import_path)
            try:
                await host.start(root)
            except WorkerDied:
                if root is None:
                    raise
                await host.start(None)  # the root went away meanwhile: a fresh interpreter
            hosts.append(host)
            if host.forked_by_root:
                self._forked[host.pid] = host
            return host

    def _pick(self, import_path: str, avoid: Host | None) -> Host | None:
        live = [h for h in self._hosts.get(import_path, ()) if h.alive and h is not avoid and not h.retiring]
        if avoid is not None:
            return next((h for h in live if not h.stalled), None)
        return next((h for h in live if not h.stalled), live[0] if live else None)

    def release(self, host: Host) -> None:
        """A model left ``host``: stop it if it is now an idle sibling (the runtime has another
        live host), so that a stall does not leave a process behind for good."""
        hosts = self._hosts.get(host.import_path, [])
        if host.alive and host.idle and (host.retiring or any(h.alive and h is not host for h in hosts)):
            hosts.remove(host)
            task = asyncio.get_running_loop().create_task(host.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _host_exited(self, event: HostExited) -> None:
        host = self._forked.pop(event.pid, None)
        if host is not None:
            host.exited(event.status)
        else:  # it died before it was ready
            log.warning("a host (pid %d) %s", event.pid, exit_text(event.status))

    def hosts(self) -> list[Host]:
        return [h for hosts in self._hosts.values() for h in hosts if h.alive]

    def kill_stopped_root(self) -> None:
        """Kill the root if it is stopped while a host waits for its fork (the supervisor asks):
        that host would wait for good, and every other runtime's behind it. Killed, the fork
        fails and the host starts as a fresh interpreter; the next host needed starts a new
        root. The hosts it forked die with it (parent-death signal): their models' requests
        are retried as for any host death. A stopped root that nobody waits for is left be."""
        root = self._root_proc
        if root is not None and root.alive and root.waiting and is_stopped(root.proc.pid):
            log.error("the runtime template (pid %d) is stopped; killing it", root.proc.pid)
            root.proc.kill()

    async def aclose(self) -> None:
        hosts = [h for group in self._hosts.values() for h in group]
        self._hosts = {}
        await asyncio.gather(*(h.aclose() for h in hosts), *self._closing, return_exceptions=True)
        root, self._root_proc = self._root_proc, None
        if root is not None:
            await root.aclose()
