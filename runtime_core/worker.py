"""The worker loop: frames in, decode -> runtime -> encode, frames out.

A worker serves one model. It is forked from its runtime's host (see
:mod:`runtime_core.host`), which already holds the loaded model, so it starts in
milliseconds and shares the model's pages copy-on-write; or, when the host cannot
fork safely (it has threads), it is a fresh interpreter (``--worker``) that loads the
model itself. A Ray actor (:mod:`runtime_core.pools.ray`) runs the same serving loop
(:func:`serve`) on a thread, over a TCP connection it opened back to the main process.

The main process owns the worker's data socket. The worker answers ``WorkerReady``
(or ``WorkerLoadFailed``) in a control frame, and each ``Ping`` with a ``Pong`` (the
heartbeat by which a stalled idle worker is found), then serves INFER frames with an asyncio
loop: requests that arrive while it computes wait in the socket and are read together
afterwards, and run as one batch (:class:`~runtime_core.batchloop.BatchLoop`). Replies of
one batch leave in one write.

Lifetimes: a worker watches the main process through a pidfd and exits when it dies,
even in the middle of a request. An ``Unload`` control frame or the closing of its data
socket makes it finish what runs, unload and exit. Nothing here decides about retries,
restarts or scaling: the pool does.
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
import signal
import socket
import sys
import threading
import time

from threadpoolctl import threadpool_limits

from runtime_core.batchloop import BatchLoop
from runtime_core.control import Ping, Pong, Unload, WorkerLoadFailed, WorkerReady
from runtime_core.framing import FramedProtocol
from runtime_core.inference import ModelHandler
from runtime_core.messages import CONTROL, INFER, Outcome, control_frame, parse_control, parse_infer, reply_frame
from runtime_core.processes import configure_logging, new_loop, set_process_name, watch_main_process
from runtime_core.runtime import Runtime
from runtime_core.sanitize import client_message
from runtime_core.spec import WorkerSpec, metadata_of
from runtime_core.yieldpoints import YieldPoints

log = logging.getLogger("runtime_core.worker")


class _WorkerProtocol(FramedProtocol):
    """Reads frames from the main process, hands requests to the batch loop, writes replies."""

    def __init__(self, batcher: BatchLoop) -> None:
        super().__init__()
        self.batcher = batcher
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def corrupt(self) -> None:
        self._finish()

    def frame_received(self, kind: int, request_id: int, payload: memoryview) -> None:
        if kind == INFER:
            _slot, envelope = parse_infer(payload)
            future = self.batcher.submit(envelope)
            future.add_done_callback(functools.partial(self._reply, request_id))
        elif kind == CONTROL:
            message = parse_control(payload)
            if isinstance(message, Unload):
                self._finish()
            elif isinstance(message, Ping):
                self.write(control_frame(0, Pong(message.sent)))

    def _reply(self, request_id: int, future: asyncio.Future[Outcome]) -> None:
        # The replies of one batch leave in one write (one wake-up of the main process).
        self.queue(reply_frame(request_id, future.result()))

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()


async def _serve(handler: ModelHandler, sock: socket.socket, hello: WorkerReady, batch_time: float) -> None:
    loop = asyncio.get_running_loop()
    settings = handler.runtime.settings
    # Adaptive batching holds requests in the main process, which sees when workers are busy
    # (pools.process), and a worker runs what it is sent at once (``batch_time`` 0); a Ray
    # actor, whose pool holds nothing, waits ``max_batch_time`` for a batch itself.
    batcher = BatchLoop(handler, settings.max_batch_size, batch_time, YieldPoints())
    runner = loop.create_task(batcher.run())
    transport, protocol = await loop.connect_accepted_socket(lambda: _WorkerProtocol(batcher), sock)
    transport.write(control_frame(0, hello))
    await protocol.done
    batcher.close()
    await runner
    with contextlib.suppress(Exception):
        await handler.runtime.unload()
    transport.close()


def serve(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    spec: WorkerSpec,
    index: int,
    runtime: Runtime | None,
    batch_time: float = 0.0,
) -> bool:
    """Load the model (unless ``runtime`` is given, loaded), say ``WorkerReady`` on ``sock``
    and serve its frames on ``loop`` until unloaded or the socket closes. Returns ``False``
    (after a ``WorkerLoadFailed`` frame) if the load failed. The one serving loop of a local
    worker process and of a Ray actor."""
    started = time.perf_counter()
    if runtime is None:
        runtime = spec.build(index)
        try:
            loop.run_until_complete(runtime.load())
        except Exception as exc:
            # The main process logs the failure in one line: the traceback is for debugging (issue 20).
            log.debug("model %r: load failed in worker %d", runtime.context.model_name, index, exc_info=True)
            sock.sendall(control_frame(0, WorkerLoadFailed(client_message(str(exc)))))
            return False
        # As a host does after a load: what exists now (the interpreter's, the libraries' and,
        # in a Ray actor, Ray's own large heap) is left out of every later collection, which
        # then walks only what requests allocate.
        gc.collect()
        gc.freeze()
    else:
        runtime.context = dataclasses.replace(runtime.context, worker_index=index)
    hello = WorkerReady(os.getpid(), index, time.perf_counter() - started, metadata_of(runtime))
    loop.run_until_complete(_serve(ModelHandler(runtime, spec.max_elements), sock, hello, batch_time))
    return True


def run_worker(sock: socket.socket, spec: WorkerSpec, index: int, runtime: Runtime | None) -> None:
    """Body of a worker process (forked or fresh). Never returns."""
    code = 0
    try:
        set_process_name(f"rc-w{index}:{spec.key}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        threading.Thread(target=watch_main_process, args=(spec.main_pid,), daemon=True).start()
        if spec.threads > 1:  # the template's environment already caps every pool at one
            threadpool_limits(limits=spec.threads)
        loop = new_loop()
        asyncio.set_event_loop(loop)
        if not serve(loop, sock, spec, index, runtime):
            os._exit(3)
    except BaseException:  # the process must end here, never fall back into the host's loop
        log.exception("worker %d crashed", index)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> None:
    """``python -m runtime_core.worker --worker FD INDEX``: a fresh worker, spec on stdin."""
    if argv[:1] != ["--worker"]:
        sys.exit("runtime_core.worker is started by the server, not by hand")
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    configure_logging(spec.log_level)
    run_worker(socket.socket(fileno=int(argv[1])), spec, int(argv[2]), None)


if __name__ == "__main__":
    main(sys.argv[1:])
