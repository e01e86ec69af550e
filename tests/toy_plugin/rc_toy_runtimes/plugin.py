"""Toy runtimes, each showing one behaviour the server must handle.

Behaviour is steered per model through ``parameters.extra`` and per request
through request ``parameters``, so tests need no mocks of the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import os
import threading
import time
from typing import Any

import numpy as np

from runtime_core import (
    InferenceRequest,
    InferenceResponse,
    InvalidRequest,
    Runtime,
    Tensor,
    hookimpl,
)


def _extra(runtime: Runtime, key: str, default: float) -> float:
    return float(runtime.settings.parameters.extra.get(key, default))


_LEAKED: list[bytes] = []


def _yield_timer_armed() -> bool:
    """Whether a POSIX timer of this process is counting down now, aimed at this thread
    (``/proc/self/timers``; glibc's ``timer_t`` of such a timer is the kernel's timer id)."""
    libc = ctypes.CDLL(None)
    libc.timer_gettime.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    here = f"signal/tid.{threading.get_native_id()}"  # how the kernel shows SIGEV_THREAD_ID
    with open("/proc/self/timers") as f:
        blocks = f.read().split("ID: ")[1:]
    for block in blocks:
        lines = block.splitlines()
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        if fields.get("notify") != here:
            continue
        left = (ctypes.c_long * 4)()  # struct itimerspec: interval, then value
        if libc.timer_gettime(ctypes.c_void_p(int(lines[0])), left) == 0 and (left[2] or left[3]):
            return True
    return False


def _wait_for_gate(gate: str) -> None:
    """Tell a test that this process got here (``<gate>.<pid>``), then wait for ``<gate>``."""
    with open(f"{gate}.{os.getpid()}", "w"):
        pass
    stop = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < stop:
        time.sleep(0.01)


class Identity(Runtime):
    """Returns its first input as ``y`` plus the worker's pid, the number of calls so far, and
    where (``loaded_in``, a pid) and when (``loaded_at``, ns) this instance was loaded.

    ``parameters.extra.sleep`` (seconds) makes every call take that long (busy CPU if
    ``spin`` is true, else sleeping). Request parameter ``crash`` makes the worker exit
    at once; ``hang`` makes it sleep for an hour; ``fail`` raises an ordinary exception;
    ``sleep`` overrides the per-call sleep; ``value_error``, ``attribute_error`` and
    ``return_none`` fail in those ways; ``label_output`` mislabels the output ``y``;
    ``started_file`` appends the worker's pid to that file when the call starts.
    ``parameters.extra.leak_mb`` makes each load keep that many MiB for good (a leak).
    ``started_file`` appends the worker's pid to that file when the call starts; ``gate`` (a
    path) creates ``<gate>.<pid>`` when the call starts, then waits until ``<gate>`` exists.
    ``parameters.extra.load_gate`` does the same in ``load``: a test holds a load in progress
    (in the host, say, to kill it there) for as long as it wants. ``report_yield`` adds
    ``sched_idle`` (1 if the call runs at ``SCHED_IDLE``) and ``yield_timer`` (1 if a timer
    aimed at the calling thread is armed), read at the end of the call.
    """

    name = "toy-identity"
    share_loaded_model = True

    async def load(self) -> None:
        self.calls = 0
        self.loaded_in = os.getpid()
        self.loaded_at = time.time_ns()  # tells one load from another in the same process
        if self.settings.parameters.extra.get("load_fails"):
            raise RuntimeError("the toy model refuses to load, as asked")
        delay = _extra(self, "load_sleep", 0.0)
        if delay:
            time.sleep(delay)
        leak = int(_extra(self, "leak_mb", 0.0))
        if leak:  # memory that unloading never gives back, as a leaky framework would keep
            _LEAKED.append(b"\1" * (leak << 20))
        if "load_gate" in self.settings.parameters.extra:
            _wait_for_gate(str(self.settings.parameters.extra["load_gate"]))

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        params = request.parameters
        if "started_file" in params:  # tells a test which worker runs this request, and when
            with open(str(params["started_file"]), "a") as marker:
                marker.write(f"{os.getpid()}\n")
        if "gate" in params:
            _wait_for_gate(str(params["gate"]))
        if params.get("crash"):
            os._exit(17)
        if params.get("hang"):
            time.sleep(3600)
        if params.get("fail"):
            raise RuntimeError("the toy model failed, as asked")
        if params.get("invalid"):
            raise InvalidRequest("the toy model rejects this input, as asked")
        if "value_error" in params:  # a failure told in the model's words
            raise ValueError(str(params["value_error"]))
        if params.get("attribute_error"):  # a bug in the runtime: Python's words, not the model's
            unset: Any = None
            unset.predict()
        if params.get("return_none"):
            return None  # type: ignore[return-value]
        delay = float(params.get("sleep", _extra(self, "sleep", 0.0)))
        if delay:
            if self.settings.parameters.extra.get("spin"):
                end = time.perf_counter() + delay
                while time.perf_counter() < end:
                    pass
            elif self.settings.parameters.extra.get("async_sleep"):
                await asyncio.sleep(delay)
            else:
                time.sleep(delay)
        first = request.inputs[0]
        reports = []
        if params.get("report_yield"):
            idle = os.sched_getscheduler(0) == os.SCHED_IDLE
            reports = [
                Tensor("sched_idle", np.array([int(idle)], dtype=np.int64)),
                Tensor("yield_timer", np.array([int(_yield_timer_armed())], dtype=np.int64)),
            ]
        return InferenceResponse(
            outputs=[
                # ``label_output`` declares another datatype than the data's (a runtime bug).
                Tensor("y", first.data, str(params.get("label_output", first.datatype))),
                Tensor("pid", np.array([os.getpid()], dtype=np.int64)),
                Tensor("calls", np.array([self.calls], dtype=np.int64)),
                Tensor("loaded_in", np.array([self.loaded_in], dtype=np.int64)),
                Tensor("loaded_at", np.array([self.loaded_at], dtype=np.int64)),
                *reports,
            ]
        )


class PerWorkerIdentity(Identity):
    """Like :class:`Identity`, but ``load`` runs in every worker (not shared by fork)."""

    name = "toy-per-worker"
    share_loaded_model = False


class ThreadedLoad(Identity):
    """Starts a thread in ``load``: forking after it would be unsafe, so the server must
    start its workers as fresh interpreters."""

    name = "toy-threaded"
    share_loaded_model = True

    async def load(self) -> None:
        import threading

        await super().load()
        self._stop = threading.Event()
        threading.Thread(target=self._stop.wait, daemon=True).start()


class Batching(Runtime):
    """Row-wise toy: ``y`` is the input ``x``; ``call`` holds, for every row, the number of the
    ``predict`` call that computed it (so a client can tell which requests shared a call);
    ``rows`` how many rows that call had; ``pid``, per row, the process that ran the call. A
    row holding -1 makes the whole call fail with a 400, which the server must pin on the
    request that carried it. Each call sleeps ``parameters.extra.sleep`` seconds. With
    ``parameters.extra.gate`` (a file path), a call holding a row of 100 first creates
    ``<gate>.<pid>`` (it has started, in that process), then blocks until the gate file or
    ``<gate>-open.<pid>`` (that process's own gate) exists: a test holds a worker busy for as
    long as it wants, and can free one worker while another stays busy."""

    name = "toy-batching"
    share_loaded_model = True
    supports_batching = True

    async def load(self) -> None:
        self.calls = 0

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        x = request.inputs[0].data
        if (x == -1).any():
            raise InvalidRequest("the toy model rejects -1, as asked")
        gate = self.settings.parameters.extra.get("gate")
        if gate and (x == 100).any():
            with open(f"{gate}.{os.getpid()}", "w"):
                pass
            own = f"{gate}-open.{os.getpid()}"
            stop = time.monotonic() + 120
            while not os.path.exists(gate) and not os.path.exists(own) and time.monotonic() < stop:
                time.sleep(0.01)
        delay = _extra(self, "sleep", 0.0)
        if delay:
            time.sleep(delay)
        rows = x.shape[0]
        outputs = [
            Tensor("y", x),
            Tensor("call", np.full(rows, self.calls, dtype=np.int64)),
            Tensor("rows", np.full(rows, rows, dtype=np.int64)),
            Tensor("pid", np.full(rows, os.getpid(), dtype=np.int64)),
        ]
        wanted = request.output_names
        return InferenceResponse(outputs=[t for t in outputs if not wanted or t.name in wanted])


class ComputeBatching(Batching):
    """:class:`Batching` declaring ``predict_never_waits``, as a compute-only runtime such as
    the sklearn one does: a host may hold another model's answers while a call of this one
    runs, if its calls were measured short; the gate makes one long all the same."""

    name = "toy-compute-batching"
    predict_never_waits = True


class Traced(Runtime):
    """Row-wise toy that shows the OpenTelemetry context its ``predict`` runs in, as any runtime
    that makes spans of its own would. Each call records one span, ``toy predict``, with a
    tracer provider of its own (the SDK's in-memory exporter, in the process that runs the
    call), and answers: ``y``, the input ``x``; ``call``, per row, the number of the call; and
    response parameters ``trace_id`` and ``parent_id``, the trace and parent span of the span it
    recorded, in hex (both "" when ``predict`` ran in no trace context)."""

    name = "toy-traced"
    share_loaded_model = True
    supports_batching = True

    async def load(self) -> None:
        self.calls = 0
        self._recorder: Any = None  # made on the first call, in the process that runs it

    def _record(self) -> tuple[str, str]:
        if self._recorder is None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            self._recorder = (provider.get_tracer("rc_toy_runtimes"), exporter)
        tracer, exporter = self._recorder
        with tracer.start_as_current_span("toy predict"):
            pass
        [span] = exporter.get_finished_spans()
        exporter.clear()
        if span.parent is None:
            return "", ""
        return format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        trace_id, parent_id = self._record()
        x = request.inputs[0].data
        return InferenceResponse(
            outputs=[Tensor("y", x), Tensor("call", np.full(x.shape[0], self.calls, dtype=np.int64))],
            parameters={"trace_id": trace_id, "parent_id": parent_id},
        )


#: Set in ``predict`` before a wait and read after it: the same context throughout a call.
_CALL = contextvars.ContextVar("toy_call", default=0)


class Waits(Identity):
    """Like :class:`Identity`, with request parameter ``await_sleep`` (seconds; 0 is a bare
    yield): ``predict`` first awaits ``asyncio.sleep``, with a context variable set across
    the wait, and answers ``waited``, 1 when the variable held its value after the wait.
    The sleep runs inside ``asyncio.timeout``, which needs a current task."""

    name = "toy-waits"
    #: Whether the sleep runs inside ``asyncio.timeout``.
    in_timeout = True

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        if "await_sleep" not in request.parameters:
            return await super().predict(request)
        token = _CALL.set(self.calls + 1)
        seconds = float(request.parameters["await_sleep"])
        if self.in_timeout:
            async with asyncio.timeout(60):
                await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(seconds)
        held = _CALL.get() == self.calls + 1
        _CALL.reset(token)  # raises ValueError if the call resumed in another context
        response = await super().predict(request)
        response.outputs.append(Tensor("waited", np.array([int(held)], dtype=np.int64)))
        return response


class SaysItNeverWaits(Waits):
    """:class:`Waits` declaring ``predict_never_waits`` all the same (without
    ``asyncio.timeout``, which a runtime that says so must not use): the server must still
    answer it when it waits."""

    name = "toy-says-never-waits"
    predict_never_waits = True
    in_timeout = False


@hookimpl
def rc_register_runtimes() -> list[type[Runtime]]:
    return [Identity, PerWorkerIdentity, ThreadedLoad, Batching, ComputeBatching, Traced, Waits, SaysItNeverWaits]
