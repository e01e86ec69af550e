"""Decode -> runtime -> encode, for one model, in the process that runs it.

:class:`ModelHandler` is the whole request path inside a worker (and in the
main process when ``parallel_workers`` is 0). It never raises: every failure
becomes an :class:`~runtime_core.messages.Outcome` with an error code and a
message fit for the client (no traceback, no server path). Tracebacks of
runtime failures go to the worker's log, naming the model.

The handler is fed the requests of a wake-up together (:mod:`runtime_core.batchloop`).
When the runtime says its outputs are row-wise (``Runtime.supports_batching``), those
requests are merged along the first axis into one ``predict`` call (coalescing). Only
compatible requests are merged: same input names, datatypes and trailing shapes, same
requested outputs and same request parameters. Each request is decoded and validated on
its own first, so a malformed request fails alone; if the merged call fails,
every request of the batch is run again on its own, so a request that makes the
model fail fails alone too.

A runtime that reads requests itself (``Runtime.raw_requests``, e.g. the ``mlserver``
runtime) skips the decoding, merging and encoding here: the requests of a wake-up, their
deadlines checked, go to its ``infer_raw`` as they came, and its bytes are the replies.

With tracing on, ``predict`` runs in the request's trace context (its envelope's
``trace``, see :mod:`runtime_core.tracing`); a merged call runs in the context of the
first of its requests that has one. A worker also counts each request's rows here, once
decoded (:attr:`~runtime_core.envelope.Outcome.rows`, Triton's ``inference_count``).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from runtime_core.codecs import json as json_codec
from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, RuntimeCoreError
from runtime_core.rawpath import run_raw
from runtime_core.runtime import Runtime
from runtime_core.sanitize import client_message, error_id, quoted
from runtime_core.tracing import attach, detach
from runtime_core.types import InferenceRequest, InferenceResponse, Tensor

__all__ = ["ModelHandler"]

log = logging.getLogger("runtime_core.inference")


class WireCodec(Protocol):
    """What a codec module of :mod:`runtime_core.codecs` offers the worker."""

    def decode(self, envelope: Envelope, max_elements: int) -> InferenceRequest: ...

    def encode(
        self,
        response: InferenceResponse,
        *,
        model_name: str,
        model_version: str | None,
        request: InferenceRequest,
        empty_parameters: bool,
    ) -> tuple[bytes, Wire, int]: ...


#: The codec of each wire format; the reply goes back in the request's format.
_CODECS: dict[Wire, WireCodec] = {Wire.JSON: json_codec, Wire.BINARY: json_codec}
#: Codecs imported on the first request in their format, by module name: a worker, host or
#: test process that never sees a gRPC request does not import protobuf and the generated
#: messages. Once imported, a codec is found in ``_CODECS``: importing by name on every
#: request costs a busy worker a measurable share of its time (issue 10).
_LAZY_CODECS: dict[Wire, str] = {Wire.GRPC: "runtime_core.codecs.grpc"}


def codec_for(wire: Wire) -> WireCodec:
    """The codec of ``wire`` (:attr:`Wire.CUSTOM` has none: only raw runtimes read it)."""
    codec = _CODECS.get(wire)
    if codec is None:
        codec = _CODECS[wire] = cast(WireCodec, importlib.import_module(_LAZY_CODECS[wire]))
    return codec


@dataclass(slots=True)
class Decoded:
    """One decoded request, the worker's one record of it from decode to encode."""

    request: InferenceRequest
    codec: WireCodec
    """The codec of the wire it came on, which also writes its reply."""
    trace: str
    """Its trace context (:attr:`~runtime_core.envelope.Envelope.trace`), "" for none."""
    rows: int
    """The inferences it counts for (:attr:`~runtime_core.envelope.Outcome.rows`)."""
    decode: float
    """Seconds its decoding took."""


@dataclass(frozen=True, slots=True)
class _Call:
    """One ``predict`` call, whose figures its requests share evenly."""

    started: float
    """``time.perf_counter()`` when work on its requests began."""
    predict: float
    """Seconds ``predict`` took."""
    size: int = 1
    """Requests merged into the call."""
    rows: int = 1
    """Rows of the call, all its requests together."""


def _batch_key(request: InferenceRequest) -> tuple[Any, ...] | None:
    """Requests with equal keys can be merged; ``None``: this one cannot."""
    try:
        rows = {t.data.shape[0] for t in request.inputs if t.data.ndim}
        if len(rows) != 1 or any(t.data.ndim == 0 for t in request.inputs):
            return None
        return (
            tuple((t.name, t.datatype, t.data.shape[1:], frozenset(t.parameters.items())) for t in request.inputs),
            tuple((o.name, frozenset(o.parameters.items())) for o in request.outputs),
            frozenset(request.parameters.items()),
        )
    except TypeError:  # unhashable parameter values
        return None


class ModelHandler:
    """Runs requests for one loaded runtime instance."""

    # One handler per model a host holds: no instance dict (issue 23).
    __slots__ = (
        "batchable",
        "max_elements",
        "mlserver_envelope",
        "model_name",
        "never_waits",
        "raw",
        "runtime",
        "unit_cost",
        "version",
    )

    def __init__(self, runtime: Runtime, max_elements: int = 0) -> None:
        self.runtime = runtime
        self.max_elements = max_elements
        self.model_name = runtime.context.model_name
        self.version = runtime.context.version
        self.batchable = bool(getattr(runtime, "supports_batching", False))
        self.mlserver_envelope = bool(getattr(runtime, "mlserver_envelope", False))
        self.raw = bool(getattr(runtime, "raw_requests", False))
        self.never_waits = bool(getattr(runtime, "predict_never_waits", False))
        #: Service seconds per request of its recent groups, the largest decaying
        #: (:func:`~runtime_core.batchloop.run_groups`); unknown until it ran once.
        self.unit_cost = math.inf

    # ------------------------------------------------------------------ pieces

    def _error(self, exc: BaseException, started: float) -> Outcome:
        if isinstance(exc, RuntimeCoreError):
            message = exc.message if isinstance(exc, InvalidRequest) else client_message(exc.message)
            return Outcome(code=exc.code, body=message.encode(), compute=time.perf_counter() - started)
        # A runtime failure: the detail (traceback, raw message) goes to the log under an id
        # that the client also gets, so that one report finds the other.
        ident = error_id()
        log.error("model %r: inference failed [error id %s]", self.model_name, ident, exc_info=exc)
        message = f"model {self.model_name!r} failed to run the request"
        # The exception's own words only where they are the model's (a ValueError about the
        # input, say); an AttributeError or KeyError speaks of the code, not of the request.
        detail = client_message(exc) if isinstance(exc, ValueError | ArithmeticError) else ""
        message += f": {detail}" if detail else " (an internal error in its runtime)"
        message += f" [error id {ident}]"
        return Outcome(code=InferenceFailed.code, body=message.encode(), compute=time.perf_counter() - started)

    def check_deadline(self, envelope: Envelope) -> None:
        if envelope.deadline and time.time() > envelope.deadline:
            raise DeadlineExceeded(f"model {self.model_name!r}: the request's deadline passed before it ran")

    def decode(self, envelope: Envelope) -> Decoded:
        decoding = time.perf_counter()
        self.check_deadline(envelope)
        if envelope.wire is Wire.CUSTOM:  # the REST front end routes these to raw runtimes only
            raise InvalidRequest(f"model {self.model_name!r} has no endpoints of its own")
        codec = codec_for(envelope.wire)
        request = codec.decode(envelope, self.max_elements)
        timeout = request.parameters.get("timeout")
        if timeout is not None:
            # Triton's request parameter, in microseconds, from the request's arrival. It is
            # read here, in the worker, so the main process never parses the body for it.
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise InvalidRequest("parameters.timeout must be a positive number of microseconds")
            if envelope.arrived and time.time() > envelope.arrived + timeout / 1e6:
                raise DeadlineExceeded(
                    f"model {self.model_name!r}: parameters.timeout ({timeout:g} us) passed before the request ran"
                )
        return Decoded(
            request=request,
            codec=codec,
            trace=envelope.trace,
            rows=self.rows(request),
            decode=time.perf_counter() - decoding,
        )

    def rows(self, request: InferenceRequest) -> int:
        """The inferences ``request`` counts for (:attr:`~runtime_core.envelope.Outcome.rows`):
        the inputs' shared first-axis length when the runtime's outputs are row-wise, else 1."""
        if not self.batchable or not request.inputs:
            return 1
        first = {t.data.shape[0] if t.data.ndim else -1 for t in request.inputs}
        return first.pop() if len(first) == 1 and -1 not in first else 1

    async def _predict(self, request: InferenceRequest, trace: str) -> InferenceResponse:
        if trace:  # the request's span is the runtime's current context (runtime_core.tracing)
            token = attach(trace)
            try:
                response = await self.runtime.predict(request)
            finally:
                detach(token)
        else:
            response = await self.runtime.predict(request)
        if not isinstance(response, InferenceResponse):
            log.error("model %r: predict returned %s, not an InferenceResponse", self.model_name, type(response))
            got = "nothing" if response is None else "something other than an inference response"
            raise InferenceFailed(f"model {self.model_name!r}: its runtime returned {got}", model=self.model_name)
        return response

    def _encode(self, item: Decoded, response: InferenceResponse, call: _Call) -> Outcome:
        encoding = time.perf_counter()
        request = item.request
        outputs = response.outputs
        if request.outputs:
            produced = {t.name: t for t in outputs}
            missing = [o.name for o in request.outputs if o.name not in produced]
            if missing:
                raise InvalidRequest(
                    f"unknown output {quoted(missing[0])}; model {self.model_name!r} has "
                    f"{', '.join(produced) or 'none'}"
                )
            outputs = [produced[o.name] for o in request.outputs]
        reply = InferenceResponse(outputs, response.parameters)
        if self.mlserver_envelope and request.id is None:
            request.id = str(uuid.uuid4())  # per request, also for each request of a merged batch
        body, wire, header_length = item.codec.encode(
            reply,
            model_name=self.model_name,
            model_version=self.version,
            request=request,
            empty_parameters=self.mlserver_envelope,
        )
        now = time.perf_counter()
        return Outcome(
            code=0,
            body=body,
            wire=wire,
            header_length=header_length,
            compute=(now - call.started) / call.size,
            decode=item.decode,
            predict=call.predict / call.size,
            encode=now - encoding,
            batch=call.size,
            rows=item.rows,
            batch_rows=call.rows,
        )

    # ------------------------------------------------------------------ entry points

    async def handle(self, envelopes: list[Envelope], started: float) -> list[Outcome]:
        """Decode each request on its own, run the decoded ones (merged where the runtime
        allows) and return one outcome per envelope, in order; a raw runtime gets them as
        they came (:mod:`runtime_core.rawpath`). ``started``: when work on them began. Never
        raises."""
        if self.raw:
            return await run_raw(self, envelopes, started)
        if len(envelopes) == 1:
            # Most groups of a host serving many models hold one request: no merging to
            # try, no places to keep (the lists below cost about 3 us a group, issue 20).
            try:
                item = self.decode(envelopes[0])
            except Exception as exc:
                return [self._error(exc, started)]
            return [await self.run(item, started)]
        outcomes: list[Outcome | None] = [None] * len(envelopes)
        decoded: list[Decoded] = []
        places: list[int] = []
        for i, envelope in enumerate(envelopes):
            try:
                decoded.append(self.decode(envelope))
                places.append(i)
            except Exception as exc:
                outcomes[i] = self._error(exc, started)
        if decoded:
            for i, outcome in zip(places, await self.run_batch(decoded, started), strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    async def run(self, item: Decoded, started: float) -> Outcome:
        try:
            predicting = time.perf_counter()
            response = await self._predict(item.request, item.trace)
            call = _Call(started=started, predict=time.perf_counter() - predicting, rows=item.rows)
            return self._encode(item, response, call)
        except Exception as exc:
            outcome = self._error(exc, started)
            outcome.decode = item.decode
            return outcome

    async def run_batch(self, items: list[Decoded], started: float) -> list[Outcome]:
        """Run decoded requests, merging compatible neighbours when the runtime allows it."""
        if not self.batchable or len(items) == 1:
            return [await self.run(item, time.perf_counter() if i else started) for i, item in enumerate(items)]
        outcomes: list[Outcome] = []
        i = 0
        while i < len(items):
            key = _batch_key(items[i].request)
            j = i + 1
            if key is not None:
                while j < len(items) and _batch_key(items[j].request) == key:
                    j += 1
            group = items[i:j]
            if len(group) > 1:
                outcomes.extend(await self._run_group(group))
            else:
                outcomes.append(await self.run(group[0], started))
            started = time.perf_counter()
            i = j
        return outcomes

    async def _run_group(self, group: list[Decoded]) -> list[Outcome]:
        started = time.perf_counter()
        sizes = [item.request.inputs[0].data.shape[0] for item in group]
        total = sum(sizes)
        first = group[0].request
        merged = InferenceRequest(
            inputs=[
                Tensor(t.name, np.concatenate([i.request.inputs[k].data for i in group]), t.datatype, t.parameters)
                for k, t in enumerate(first.inputs)
            ],
            outputs=first.outputs,
            id=None,
            parameters=first.parameters,
        )
        try:
            predicting = time.perf_counter()
            # One call for the batch: it runs in the first trace context among its requests.
            response = await self._predict(merged, next((item.trace for item in group if item.trace), ""))
            call = _Call(started=started, predict=time.perf_counter() - predicting, size=len(group), rows=total)
            if any(t.data.ndim == 0 or t.data.shape[0] != total for t in response.outputs):
                raise ValueError("outputs are not row-wise")
            # Each request's rows as views, sliced here: np.split makes the same views through
            # a generic path that costs more than the rest of the split.
            spans = list(itertools.pairwise(itertools.accumulate(sizes, initial=0)))
            pieces = [[t.data[start:stop] for start, stop in spans] for t in response.outputs]
            return [
                self._encode(
                    item,
                    InferenceResponse(
                        [
                            Tensor(t.name, pieces[k][n], t.datatype, t.parameters)
                            for k, t in enumerate(response.outputs)
                        ],
                        response.parameters,
                    ),
                    call,
                )
                for n, item in enumerate(group)
            ]
        except Exception:
            # One request may be the cause: run each alone so that only it fails.
            return [await self.run(item, time.perf_counter()) for item in group]
