"""Template processes: the root, and one host per runtime.

Process tree::

    main ──ctl──> root (rc-root)        imports every runtime in use, once; forks hosts
      │             └─ fork ─> host (rc-h:<runtime>)   one per runtime in use
      ├──ctl + data socket──────┘  │ holds that runtime's resident models (many),
      │                            │ serves their requests while they have no worker,
      │                            └─ fork ─> worker (rc-w<i>:<model>)  dedicated, elastic
      └──data socket──────────────────────────┘

The root starts with every BLAS/OpenMP pool capped at one thread, imports the runtimes
and what their ``preload`` names, freezes its heap (``gc.freeze``) and forks a host per
runtime on request; it reaps the hosts and reports how each ended (``HostExited``),
since only a parent can learn a process's exit status. A host loads models on command
(``LoadModel``), as many as the memory budget allows, and answers each with
``ModelLoaded`` (metadata, load time, the memory it took). It serves INFER frames for
any of its models on its data socket, one batch per wake-up, grouped by model, each
group answered once it is done, or with the next groups when they are surely cheap
(:mod:`runtime_core.hostanswers`): this is how a thousand quiet models cost no
process each. On ``SpawnWorker`` it forks a dedicated worker for one model, which
inherits the loaded model (copy-on-write) and so starts in milliseconds.

A host is a plain blocking loop over two sockets, never a running event loop, and forks
only while it has a single thread; otherwise (a runtime started threads) the worker is
a fresh interpreter that loads the model itself.

Isolation: a crash or hang *inside* a host affects the requests of every model it is
serving at that moment (each such request is retried once elsewhere or fails with 503)
and the main process starts a new host; models reload into it on their next request.
Dedicated workers are separate processes: a crash there affects only that worker's
requests. Lifetimes: the root and hosts die with the main process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime_core.batchloop import DEFAULT_COALESCE, run_wakeup
from runtime_core.control import (
    ForkHost,
    HostExited,
    HostForked,
    HostReady,
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    RootReady,
    SpawnWorker,
    Stop,
    UnloadModel,
    WorkerExited,
    WorkerSpawned,
)
from runtime_core.errors import ModelNotReady
from runtime_core.framing import FrameReader
from runtime_core.hostanswers import Answers, reset_in_child
from runtime_core.inference import ModelHandler
from runtime_core.messages import INFER, Outcome, parse_infer, reply_frame
from runtime_core.plugins import import_runtime
from runtime_core.processes import configure_logging, set_parent_death_signal, set_process_name, thread_count
from runtime_core.runtime import Runtime
from runtime_core.sanitize import client_message
from runtime_core.spec import WorkerSpec, metadata_of
from runtime_core.worker import run_worker

log = logging.getLogger("runtime_core.host")

#: Bytes of a wake-up's first read of the data socket, below the allocator's threshold for a
#: mapping of its own, and of each further read once one came back full.
_FIRST_READ, _LARGE_READ = 64 << 10, 1 << 20

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return 0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def _give_back_memory() -> None:
    """Return what an unloaded model freed to the system. The allocator keeps freed blocks in
    its heap for reuse; after many loads and unloads (eviction churn) a host held several
    times the memory of the models it had loaded. ``malloc_trim`` hands the free pages back."""
    if _trim is not None:
        _trim(0)


def _send(ctl: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with contextlib.suppress(OSError):
        if fds:
            socket.send_fds(ctl, [data], fds)
        else:
            ctl.send(data)


def _next_command(ctl: socket.socket) -> tuple[Any, list[int]]:
    """The next command from the main process on ``ctl`` (blocking), with the descriptors
    that came with it. When the main process has closed the socket (or it failed), this
    process has no one left to serve: it exits."""
    try:
        message, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 20, 4)
    except OSError:
        message, fds = b"", []
    if not message:
        os._exit(0)
    return pickle.loads(message), fds


def _reaper(ctl: socket.socket, event: Callable[[int, int], Any]) -> Callable[[int, object], None]:
    """A SIGCHLD handler that reaps every child that has exited and reports each on ``ctl``
    as ``event(pid, wait status)``: a host's workers (``WorkerExited``), the root's hosts
    (``HostExited``). One signal may stand for several exits, so it reaps until none is left."""

    def reap(signum: int, frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _send(ctl, event(pid, status))

    return reap


@dataclass(slots=True)
class _Loaded:
    """One model a host holds: what it was loaded from, the loaded runtime, its request handler."""

    spec: bytes
    """The :class:`WorkerSpec`, pickled, for the workers the host forks: a few hundred bytes,
    where the object, with its settings dict, was 3 KB a model at ten thousand (issue 23)."""
    runtime: Runtime
    handler: ModelHandler


class _Host:
    """The body of one host process (see the module docstring)."""

    def __init__(self, ctl: socket.socket, data: socket.socket, answer_hold: float) -> None:
        self.ctl = ctl
        self.data = data
        self.models: dict[int, _Loaded] = {}
        self.loop = asyncio.new_event_loop()  # never running between batches, so forks are clean
        self.reader = FrameReader()
        self.answers = Answers(data, answer_hold)

    # ------------------------------------------------------------------ commands

    def load(self, command: LoadModel) -> None:
        spec: WorkerSpec = command.spec
        before = _resident_bytes()
        started = time.perf_counter()
        try:
            runtime = spec.build(None)
            self.loop.run_until_complete(runtime.load())
        except Exception as exc:
            # The main process logs the failure in one line (a reload's failure too, while the
            # previous version keeps serving): the traceback is for debugging (issue 20).
            log.debug("model %r (%s): load failed", spec.name, spec.settings_path, exc_info=True)
            _send(self.ctl, ModelLoadFailed(command.slot, client_message(str(exc))))
            return
        self.answers.check_signal()
        packed = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        self.models[command.slot] = _Loaded(packed, runtime, ModelHandler(runtime, spec.max_elements))
        # What is loaded now stays untouched by the collector: forks share its pages. The load's
        # garbage in reference cycles (the estimator's probe calls, say) is collected first:
        # frozen, it stayed for the host's life (0.15 KB a model, issue 23). Only what
        # was made since the last freeze is examined.
        gc.collect()
        gc.freeze()
        seconds = time.perf_counter() - started
        grown = max(0, _resident_bytes() - before)
        _send(self.ctl, ModelLoaded(command.slot, metadata_of(runtime), seconds, grown))

    def unload(self, command: UnloadModel) -> None:
        entry = self.models.pop(command.slot, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(entry.runtime.unload())
            del entry
            _give_back_memory()

    def spawn(self, command: SpawnWorker, fd: int) -> None:
        entry = self.models.get(command.slot)
        if entry is None:  # unloaded meanwhile: pid 0 tells the main process
            os.close(fd)
            _send(self.ctl, WorkerSpawned(command.slot, command.index, 0))
            return
        runtime = entry.runtime
        if thread_count() == 1:
            pid = os.fork()
            if pid == 0:
                reset_in_child()
                self.ctl.close()
                self.data.close()
                self.loop.close()
                shared = runtime if type(runtime).share_loaded_model else None
                run_worker(socket.socket(fileno=fd), pickle.loads(entry.spec), command.index, shared)
        else:  # forking a process with threads is unsafe: start a fresh interpreter
            child = subprocess.Popen(
                [sys.executable, "-m", "runtime_core.worker", "--worker", str(fd), str(command.index)],
                pass_fds=[fd],
                stdin=subprocess.PIPE,
            )
            assert child.stdin is not None
            child.stdin.write(entry.spec)
            child.stdin.close()
            pid = child.pid
        os.close(fd)
        _send(self.ctl, WorkerSpawned(command.slot, command.index, pid))

    # ------------------------------------------------------------------ requests

    def serve(self, frames: list[tuple[int, int, memoryview]]) -> None:
        by_slot: dict[int, list[tuple[int, Any]]] = {}
        for kind, request_id, payload in frames:
            if kind == INFER:
                slot, envelope = parse_infer(payload)
                by_slot.setdefault(slot, []).append((request_id, envelope))
        out = self.answers.pieces
        ids: list[list[int]] = []
        groups: list[tuple[ModelHandler, list[Any]]] = []
        for slot, items in by_slot.items():
            entry = self.models.get(slot)
            if entry is None:
                gone = Outcome(code=ModelNotReady.code, body=b"the model is not loaded")
                for request_id, _ in items:
                    out.extend(reply_frame(request_id, gone))
                continue
            for start in range(0, len(items), DEFAULT_COALESCE):
                chunk = items[start : start + DEFAULT_COALESCE]
                ids.append([request_id for request_id, _ in chunk])
                groups.append((entry.handler, [envelope for _, envelope in chunk]))
        if groups:
            # One run of the event loop for the whole wake-up, whatever the number of models
            # in it (see run_wakeup): with traffic spread over many models, most groups hold
            # one request, and a loop run per group cost more than the group's own decoding
            # (issue 9). Each group's answers leave before the next group runs, unless that
            # group is surely cheap: then they wait for it, and a wake-up of cheap groups
            # leaves in one write (runtime_core.hostanswers).
            last = len(groups) - 1
            answers = self.answers

            def answer(i: int, outcomes: list[Outcome]) -> None:
                for request_id, outcome in zip(ids[i], outcomes, strict=True):
                    out.extend(reply_frame(request_id, outcome))
                if i < last and not answers.wait_for(*groups[i + 1]):
                    answers.flush()

            run_wakeup(self.loop, groups, answer)
        self.answers.flush()

    def run(self) -> None:
        signal.signal(signal.SIGCHLD, _reaper(self.ctl, WorkerExited))
        selector = selectors.DefaultSelector()
        selector.register(self.ctl, selectors.EVENT_READ, "ctl")
        selector.register(self.data, selectors.EVENT_READ, "data")
        self.data.setblocking(True)  # replies are written whole; reads do not wait (see _read)
        _send(self.ctl, HostReady(os.getpid()))
        while True:
            for key, _ in selector.select():
                if key.data == "ctl":
                    self._command()
                else:
                    self._read()

    def _command(self) -> None:
        command, fds = _next_command(self.ctl)
        if isinstance(command, LoadModel):
            self.load(command)
        elif isinstance(command, UnloadModel):
            self.unload(command)
        elif isinstance(command, SpawnWorker):
            self.spawn(command, fds[0])
        elif isinstance(command, Stop):
            os._exit(0)

    def _read(self) -> None:
        # A small first read: a 1 MiB one was a fresh mapping of memory, resized and unmapped,
        # three system calls per wake-up more than the read itself (issue 20).
        frames: list[tuple[int, int, memoryview]] = []
        size = _FIRST_READ
        while True:
            try:
                chunk = self.data.recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                os._exit(0)
            frames.extend(self.reader.feed(chunk))
            if len(chunk) < size:
                break
            size = _LARGE_READ
        self.serve(frames)


def _quiet_signals() -> None:
    """A template and everything it forks ignore the terminal's signals. Ctrl-C is the main
    process's to handle (it drains). The templates run in a background process group of the
    main process's session (see ``TEMPLATE_POPEN_ARGS``), where a log line written to the
    terminal under ``stty tostop`` would otherwise stop the process."""
    for sig in (signal.SIGINT, signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)


def _run_host(ctl: socket.socket, data: socket.socket, import_path: str, log_level: str, answer_hold: float) -> None:
    """Body of a host, however it was started. Never returns."""
    _quiet_signals()
    configure_logging(log_level)
    name = import_runtime(import_path).name if import_path else "host"
    set_process_name(f"rc-h:{name}")
    try:
        _Host(ctl, data, answer_hold).run()
    except Exception:
        log.exception("host of %s crashed", import_path)
    os._exit(1)


def root_main(ctl_fd: int, expected_parent: int, import_paths: str, log_level: str) -> None:
    """The root template: imports the runtimes (comma-separated import paths) and what their
    ``preload`` names once, then forks one host per runtime on request."""
    set_parent_death_signal()
    if os.getppid() != expected_parent:
        os._exit(1)
    _quiet_signals()
    configure_logging(log_level)
    ctl = socket.socket(fileno=ctl_fd)
    set_process_name("rc-root")
    for import_path in import_paths.split(","):
        try:
            import_runtime(import_path).preload()
        except Exception:  # that runtime's host will import it itself, and report
            log.warning("runtime %s failed to preload", import_path, exc_info=True)
    fork_safe = thread_count() == 1
    gc.collect()
    gc.freeze()
    _send(ctl, RootReady(fork_safe))
    if not fork_safe:
        os._exit(0)
    # The root reaps its hosts and tells the main process how each ended: a host is not the
    # main process's child, so nothing else can learn its exit status (issue 20).
    signal.signal(signal.SIGCHLD, _reaper(ctl, HostExited))
    while True:
        command, fds = _next_command(ctl)
        if not isinstance(command, ForkHost) or len(fds) != 2:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            ctl.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            set_parent_death_signal()
            ctl_end, data_end = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
            _run_host(ctl_end, data_end, command.import_path, command.log_level, command.answer_hold)
        for fd in fds:
            os.close(fd)
        _send(ctl, HostForked(pid))


def host_main(
    ctl_fd: int, data_fd: int, expected_parent: int, import_path: str, log_level: str, answer_hold: float
) -> None:
    """A host started as a fresh interpreter (when the root cannot fork)."""
    set_parent_death_signal()
    if os.getppid() != expected_parent:
        os._exit(1)
    _run_host(socket.socket(fileno=ctl_fd), socket.socket(fileno=data_fd), import_path, log_level, answer_hold)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--root"]:
        root_main(int(argv[1]), int(argv[2]), argv[3], argv[4])
    elif argv[:1] == ["--host"]:
        host_main(int(argv[1]), int(argv[2]), int(argv[3]), argv[4], argv[5], float(argv[6]))
    else:
        sys.exit("runtime_core.host is started by the server, not by hand")


if __name__ == "__main__":
    main(sys.argv[1:])
