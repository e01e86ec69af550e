"""The root template process's main-side handle, and the ``/proc`` reads the handles share.

The root (``python -m runtime_core.host --root``, see :mod:`runtime_core.host`) imports every
runtime in use once and forks the hosts (:mod:`runtime_core.pools.host_handle`); it reaps the
hosts it forked and reports how each ended (``HostExited``). When it dies, the hosts it forked
die with it (parent-death signal); a fork it does not answer fails with
:class:`~runtime_core.errors.WorkerDied`.
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
from collections.abc import Callable
from typing import Any

from runtime_core.control import (
    ForkHost,
    HostExited,
    HostForked,
    RootReady,
)
from runtime_core.errors import WorkerDied
from runtime_core.processes import THREAD_ENV_VARS

log = logging.getLogger("runtime_core.pools")


#: How the templates are started. In their own process group, so that a terminal's Ctrl-C
#: reaches only the main process, which drains; but in the main process's session, not a new
#: one: where the kernel groups processes by session for CPU fairness (autogroup, on when the
#: server is not in a CPU cgroup of its own), a new session would put the main process and the
#: workers in separate groups, and a worker demoted to SCHED_IDLE would compete with the main
#: process's wake-ups as a group, at full weight, instead of yielding at once.
TEMPLATE_POPEN_ARGS: dict[str, Any] = {"process_group": 0, "stdin": subprocess.DEVNULL}


def template_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_ENV_VARS:
        env[var] = "1"  # templates must stay single-threaded to fork safely
    return env


_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (0 if it is gone): one small read of
    ``/proc/<pid>/statm``, cheap enough for every load and supervisor pass."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_wait_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` (its main thread) has spent runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_text(status: int) -> str:
    """A wait status in words."""
    if not os.WIFSIGNALED(status):
        return f"exited with code {os.waitstatus_to_exitcode(status)}"
    number = os.WTERMSIG(status)
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown"
    return f"was killed by signal {number} ({name})"


def is_stopped(pid: int) -> bool:
    """``pid`` is stopped (``SIGSTOP``, or traced: state ``T`` or ``t`` in ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"T", b"t")


#: What :func:`read_event` returns once the other end has closed the control socket.
CLOSED = object()


def read_event(ctl: socket.socket, size: int) -> Any:
    """The next event on a non-blocking control socket of a template (one pickled message per
    packet): ``None`` when none has arrived yet, :data:`CLOSED` when the other end is gone (a
    failed read counts as gone: nothing more will come from it)."""
    try:
        message = ctl.recv(size)
    except BlockingIOError:
        return None
    except OSError:
        return CLOSED
    return pickle.loads(message) if message else CLOSED


class Root:
    """The root template process (``python -m runtime_core.host --root``)."""

    def __init__(self, import_path: str, log_level: str, on_exit: Callable[[HostExited], None]) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime_core.host",
                "--root",
                str(child.fileno()),
                str(os.getpid()),
                import_path,
                log_level,
            ],
            pass_fds=[child.fileno()],
            env=template_env(),
            **TEMPLATE_POPEN_ARGS,
        )
        child.close()
        parent.setblocking(False)
        self.ctl = parent
        self.alive = True
        self.ready: asyncio.Future[Any] | None = None
        self.waiting: list[asyncio.Future[int]] = []
        self.on_exit = on_exit

    def attach(self) -> asyncio.Future[Any]:
        """Start reading from the root in the running loop (it may have been started before
        the loop, so that it imports while the main process is still starting)."""
        if self.ready is None:
            loop = asyncio.get_running_loop()
            self.ready = loop.create_future()
            loop.add_reader(self.ctl.fileno(), self._read)
        return self.ready

    def _read(self) -> None:
        event = read_event(self.ctl, 1 << 16)
        if event is None:
            return
        assert self.ready is not None
        if event is CLOSED:
            self.alive = False
            asyncio.get_running_loop().remove_reader(self.ctl.fileno())
            if not self.ready.done():
                self.ready.set_result(RootReady(False))
            for fut in self.waiting:
                if not fut.done():
                    fut.set_exception(WorkerDied("the runtime template exited"))
            self.waiting.clear()
            return
        if not self.ready.done():
            self.ready.set_result(event)
        elif isinstance(event, HostForked) and self.waiting:
            fut = self.waiting.pop(0)
            if not fut.done():
                fut.set_result(event.pid)
        elif isinstance(event, HostExited):
            self.on_exit(event)

    async def fork(self, command: ForkHost, fds: list[int]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        try:
            socket.send_fds(self.ctl, [pickle.dumps(command)], fds)
        except OSError:
            self.waiting.remove(fut)
            raise WorkerDied("the runtime template is gone") from None
        return await fut

    async def aclose(self) -> None:
        if self.alive and self.ready is not None:
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.ctl.fileno())
        self.ctl.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5.0)
        except TimeoutError:
            self.proc.kill()
