"""Worker processes: a template ("zygote") per model and the workers forked from it.

Process tree of one model with ``parallel_workers: 2``::

    main process ──ctl (SOCK_SEQPACKET)──> zygote   (python -m runtime_core.worker --zygote)
         │                                   │ fork (or exec, if the zygote has threads)
         ├──data socket──────────────────> worker 0
         └──data socket──────────────────> worker 1

The zygote starts with every BLAS/OpenMP pool capped at one thread, imports the
runtime and, for runtimes that allow it (``share_loaded_model``), loads the model
once; then it freezes the heap (``gc.freeze``) and forks the workers, which share
the interpreter, the libraries and the model copy-on-write. Forking is only done
while the zygote has a single thread; otherwise each worker is a fresh
interpreter (``--worker``) that loads the model itself.

The main process creates each worker's data socket and hands one end to the
zygote with ``SCM_RIGHTS``; the zygote forks a worker onto it and answers with
the worker's pid. A worker serves frames (see :mod:`runtime_core.messages`) with
an asyncio loop: requests that arrive while it computes wait in the socket and
are read together afterwards. Replies are written as each request finishes.

Lifetimes: the zygote dies with the main process (``PR_SET_PDEATHSIG``); each
worker watches the main process through a pidfd and exits when it dies, even
in the middle of a request. A worker whose data socket closes unloads and
exits. Nothing here decides about retries or restarts: the pool does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from runtime_core.inference import BatchLoop, ModelHandler, client_message
from runtime_core.messages import (
    CONTROL,
    INFER,
    FrameReader,
    Outcome,
    control_frame,
    parse_control,
    parse_infer,
    reply_frame,
)
from runtime_core.plugins import import_runtime
from runtime_core.runtime import ModelMetadata, Runtime, RuntimeContext
from runtime_core.settings import ModelSettings

log = logging.getLogger("runtime_core.worker")

#: Thread caps applied to the zygote's environment before numpy and friends import.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a zygote needs to build the model's runtime; pickled once per group."""

    settings: dict[str, Any]
    settings_path: str
    import_path: str
    uri: str | None
    threads: int
    main_pid: int
    log_level: str
    max_elements: int = 0

    def model_settings(self) -> ModelSettings:
        settings = ModelSettings.model_validate(self.settings)
        settings._path = Path(self.settings_path)
        return settings

    def build(self, index: int | None) -> Runtime:
        cls = import_runtime(self.import_path)
        settings = self.model_settings()
        context = RuntimeContext(
            model_name=settings.name,
            version=settings.version,
            folder=Path(self.settings_path).parent,
            uri=Path(self.uri) if self.uri else None,
            threads=self.threads,
            worker_index=index,
        )
        return cls(settings, context)


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return threading.active_count()


def _set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def set_process_name(name: str) -> None:
    """Set the kernel's name for this process (``ps -o comm``, ``top``; 15 bytes at most)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _watch_main_process(pid: int) -> None:
    """Daemon thread body: exit at once when the main process is gone."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
    select.select([fd], [], [])
    os._exit(1)


try:  # imported here, in the templates, so that forked workers need not import it
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    _uvloop = None  # type: ignore[assignment]


def _new_loop() -> asyncio.AbstractEventLoop:
    if _uvloop is not None:
        return _uvloop.new_event_loop()
    return asyncio.new_event_loop()  # pragma: no cover


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid, message, and
    ``model`` when the call passed ``extra={"model": ...}``; ``exception`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        model = getattr(record, "model", None)
        if model is not None:
            doc["model"] = model
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str | None = None) -> None:
    """Log to stderr at ``level``; ``fmt`` is ``text`` or ``json`` (default: the
    ``RUNTIME_CORE_LOG_FORMAT`` variable, which workers inherit from the server)."""
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or os.environ.get("RUNTIME_CORE_LOG_FORMAT", "text")).lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _metadata(runtime: Runtime) -> ModelMetadata:
    try:
        return runtime.metadata()
    except Exception:
        log.warning("model %r: metadata() failed; showing the declared inputs and outputs", runtime.context.model_name)
        return Runtime.metadata(runtime)


class _WorkerProtocol(asyncio.Protocol):
    """Reads frames from the main process, hands requests to the batch loop, writes replies."""

    def __init__(self, batcher: BatchLoop) -> None:
        self.batcher = batcher
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.outbox: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = list(self.reader.feed(data))
        except ValueError:
            self._finish()
            return
        for kind, request_id, payload in frames:
            if kind == INFER:
                _slot, envelope = parse_infer(payload)
                future = self.batcher.submit(envelope)
                future.add_done_callback(functools.partial(self._reply, request_id))
            elif kind == CONTROL and parse_control(payload).get("cmd") == "unload":
                self._finish()

    def _reply(self, request_id: int, future: asyncio.Future[Outcome]) -> None:
        if not self.outbox:
            # The replies of one batch leave in one write (one wake-up of the main process).
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.extend(reply_frame(request_id, future.result()))

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.outbox)
        self.outbox = []

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()


async def _serve(handler: ModelHandler, sock: socket.socket, hello: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    settings = handler.runtime.settings
    batcher = BatchLoop(handler, settings.max_batch_size, settings.max_batch_time)
    runner = loop.create_task(batcher.run())
    transport, protocol = await loop.connect_accepted_socket(lambda: _WorkerProtocol(batcher), sock)
    transport.write(control_frame(0, hello))
    await protocol.done
    batcher.close()
    await runner
    with contextlib.suppress(Exception):
        await handler.runtime.unload()
    transport.close()


def run_worker(sock: socket.socket, spec: WorkerSpec, index: int, runtime: Runtime | None) -> None:
    """Body of a worker process (forked or fresh). Never returns."""
    code = 0
    try:
        set_process_name(f"rc-w{index}:{spec.settings['name']}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        threading.Thread(target=_watch_main_process, args=(spec.main_pid,), daemon=True).start()
        if spec.threads > 1:  # the template's environment already caps every pool at one
            threadpool_limits(limits=spec.threads)
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        started = time.perf_counter()
        if runtime is None:
            runtime = spec.build(index)
            try:
                loop.run_until_complete(runtime.load())
            except Exception as exc:
                log.error("model %r: load failed in worker %d", runtime.context.model_name, index, exc_info=True)
                sock.sendall(control_frame(0, {"event": "load_failed", "error": client_message(str(exc))}))
                os._exit(3)
        else:
            runtime.context = dataclasses.replace(runtime.context, worker_index=index)
        hello = {
            "event": "ready",
            "pid": os.getpid(),
            "index": index,
            "load_time": time.perf_counter() - started,
            "metadata": _metadata(runtime),
        }
        loop.run_until_complete(_serve(ModelHandler(runtime, spec.max_elements), sock, hello))
    except BaseException:  # the process must end here, never fall back into the zygote's loop
        log.exception("worker %d crashed", index)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


class _Zygote:
    def __init__(self, ctl: socket.socket, spec: WorkerSpec) -> None:
        self.ctl = ctl
        self.spec = spec
        self.template: Runtime | None = None
        self.fork_safe = False

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.ctl.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _reap(self, signum: int, frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"event": "exited", "pid": pid, "status": status})

    def prepare(self) -> None:
        started = time.perf_counter()
        cls = import_runtime(self.spec.import_path)
        if cls.share_loaded_model:
            runtime = self.spec.build(None)
            try:
                asyncio.run(runtime.load())
            except Exception as exc:
                log.error("model %r: load failed", runtime.context.model_name, exc_info=True)
                self.send({"event": "load_failed", "error": client_message(str(exc))})
                os._exit(3)
            self.template = runtime
        self.fork_safe = thread_count() == 1
        gc.collect()
        gc.freeze()
        self.send(
            {
                "event": "template_ready",
                "pid": os.getpid(),
                "load_time": time.perf_counter() - started,
                "fork_safe": self.fork_safe,
                "shared": self.template is not None and self.fork_safe,
            }
        )

    def spawn(self, fd: int, index: int) -> int:
        if self.fork_safe:
            pid = os.fork()
            if pid == 0:
                self.ctl.close()
                run_worker(socket.socket(fileno=fd), self.spec, index, self.template)
            os.close(fd)
            return pid
        child = subprocess.Popen(
            [sys.executable, "-m", "runtime_core.worker", "--worker", str(fd), str(index)],
            pass_fds=[fd],
            stdin=subprocess.PIPE,
        )
        assert child.stdin is not None
        child.stdin.write(pickle.dumps(self.spec))
        child.stdin.close()
        os.close(fd)
        return child.pid

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, self._reap)
        self._reap(signal.SIGCHLD, None)  # workers that exited before the handler was set
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(self.ctl, 1 << 16, 4)
            except OSError:
                message, fds = b"", []
            if not message:
                os._exit(0)
            command = pickle.loads(message)
            if command["cmd"] == "spawn":
                pid = self.spawn(fds[0], command["index"])
                self.send({"event": "spawned", "index": command["index"], "pid": pid})
            elif command["cmd"] == "stop":
                os._exit(0)


def _run_zygote(ctl: socket.socket, spec: WorkerSpec) -> None:
    """Body of a model's zygote, however it was started. Never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(spec.log_level)
    set_process_name(f"rc-z:{spec.settings['name']}")
    zygote = _Zygote(ctl, spec)
    try:
        zygote.prepare()
    except Exception as exc:
        log.error("model template failed", exc_info=True)
        zygote.send({"event": "load_failed", "error": client_message(str(exc))})
        os._exit(3)
    zygote.serve()
    os._exit(0)


def zygote_main(ctl_fd: int, expected_parent: int) -> None:
    _set_parent_death_signal()
    if os.getppid() != expected_parent:  # the main process died before prctl took effect
        os._exit(1)
    ctl = socket.socket(fileno=ctl_fd)
    _run_zygote(ctl, pickle.loads(ctl.recv(1 << 20)))


def root_main(ctl_fd: int, expected_parent: int, import_paths: str, log_level: str) -> None:
    """The root template: imports the runtimes (comma-separated import paths) and what their
    ``preload`` names once, then forks one zygote per model on request. Model zygotes
    therefore start without importing the frameworks again, and share their pages."""
    _set_parent_death_signal()
    if os.getppid() != expected_parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level)
    ctl = socket.socket(fileno=ctl_fd)
    set_process_name("rc-root")

    def send(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            ctl.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    for import_path in import_paths.split(","):
        try:
            import_runtime(import_path).preload()
        except Exception:  # that runtime's zygotes will import it themselves, and report
            log.warning("runtime %s failed to preload", import_path, exc_info=True)
    fork_safe = thread_count() == 1
    gc.collect()
    gc.freeze()
    send({"event": "root_ready", "fork_safe": fork_safe})
    if not fork_safe:
        os._exit(0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # zygotes are reaped by the kernel
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 20, 4)
        except OSError:
            message, fds = b"", []
        if not message:
            os._exit(0)
        command = pickle.loads(message)
        if command["cmd"] != "zygote":
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            ctl.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _set_parent_death_signal()
            _run_zygote(socket.socket(fileno=fds[0]), command["spec"])
        os.close(fds[0])
        send({"event": "forked", "pid": pid})


def main(argv: list[str]) -> None:
    if argv[:1] == ["--zygote"]:
        zygote_main(int(argv[1]), int(argv[2]))
    elif argv[:1] == ["--root"]:
        root_main(int(argv[1]), int(argv[2]), argv[3], argv[4])
    elif argv[:1] == ["--worker"]:
        spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
        configure_logging(spec.log_level)
        run_worker(socket.socket(fileno=int(argv[1])), spec, int(argv[2]), None)
    else:
        sys.exit("runtime_core.worker is started by the server, not by hand")


if __name__ == "__main__":
    main(sys.argv[1:])
