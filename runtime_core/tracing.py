"""OpenTelemetry tracing of inference requests (the ``tracing`` extra), when ``tracing`` is on.

Two halves, one per side of the process boundary:

* In the main process, :class:`RequestTracer` makes one SERVER span per inference request
  for both front ends (REST and gRPC), a child of the caller's context when the request
  carries a W3C ``traceparent`` (an HTTP header, or gRPC metadata). Once the answer is back it
  adds two child spans built from what the server measured anyway: ``queue`` (the wait in
  the model's queue, from the scheduler) and ``compute`` (decode, predict and encode in the
  worker, as the worker reports them, with the three parts, the batch and the rows as
  attributes). They are laid back to back, ending when the answer came back; the transfer
  between the main process and the worker (tens of microseconds) is not drawn.
* The request's span travels to the worker as its ``traceparent`` string in the envelope
  (:attr:`~runtime_core.envelope.Envelope.trace`; empty when tracing is off, which costs one
  byte of the frame). The worker makes it the current OpenTelemetry context while the
  runtime's ``predict`` runs (:func:`attach` / :func:`detach`), so that spans a runtime makes
  itself (``opentelemetry.trace.get_tracer(...).start_as_current_span(...)``) are children of
  the request's span, exported by whatever tracer provider the worker's process has.
  A ``predict`` call that serves several requests merged into one batch runs in the context
  of the *first* of them that carries one; the ``compute`` span of every request of the batch
  says how many requests shared the call (``runtime_core.batch``).

Spans go to whatever tracer provider the application configured (for instance with
``opentelemetry-instrument`` and the ``OTEL_*`` variables); with none, nothing is recorded,
but the caller's ``traceparent`` still reaches the runtime.

Nothing here imports OpenTelemetry at import time: :class:`RequestTracer` imports it when
built (only when ``tracing`` is on), and the worker side only when a request carries a
context. A worker whose Python lacks OpenTelemetry (a Ray node without the extra) runs the
request without the context and says so once in its log.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from runtime_core.envelope import Outcome

log = logging.getLogger("runtime_core.tracing")


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class RequestSpan:
    """The span of one inference request while it is served (see :meth:`RequestTracer.request`)."""

    __slots__ = ("_span", "_tracer", "traceparent")

    def __init__(self, span: Any, tracer: RequestTracer) -> None:
        self._span = span
        self._tracer = tracer
        context = span.get_span_context()
        #: The span as a W3C ``traceparent``, for the envelope ("" when it has no valid context).
        self.traceparent = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
            if context.is_valid
            else ""
        )

    def model(self, name: str, version: str | None) -> None:
        """Name the span after the model (the gRPC front end knows it only after routing)."""
        self._span.update_name(f"infer {name}")
        self._span.set_attribute("runtime_core.model", name)
        if version:
            self._span.set_attribute("runtime_core.model_version", version)

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def failed(self) -> None:
        """Mark the request as failed by the server (a client's error is not the server's)."""
        self._span.set_status(self._tracer._error)

    def answered(self, outcome: Outcome) -> None:
        """Add the ``queue`` and ``compute`` child spans, ending now."""
        answered = time.time_ns()
        computing = answered - _ns(outcome.compute)
        queued = computing - _ns(outcome.queued)
        tracer = self._tracer._tracer
        tracer.start_span("queue", start_time=queued).end(end_time=computing)
        compute = tracer.start_span(
            "compute",
            start_time=computing,
            attributes={
                "runtime_core.decode_ms": outcome.decode * 1000,
                "runtime_core.predict_ms": outcome.predict * 1000,
                "runtime_core.encode_ms": outcome.encode * 1000,
                "runtime_core.batch": outcome.batch,
                "runtime_core.rows": outcome.rows,
            },
        )
        compute.end(end_time=answered)


class RequestTracer:
    """Makes the spans of inference requests in the main process, for any front end.

    Building one imports OpenTelemetry: ``ImportError`` if the ``tracing`` extra is not installed.
    """

    def __init__(self) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._extract = propagate.extract
        self._tracer = trace.get_tracer("runtime_core")
        self._kind = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[RequestSpan]:
        """A SERVER span, current while the block runs, continuing the trace of ``carrier`` (the
        request's headers or metadata: ``traceparent``, ``tracestate``) if it names one."""
        parent = self._extract(carrier)
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=self._kind,
            attributes=attributes,
            record_exception=False,  # errors are answers here; the front end says which are the server's
            set_status_on_exception=False,
        ) as span:
            yield RequestSpan(span, self)


# ---------------------------------------------------------------------- worker side

_propagator: Any = None
_missing = False


def attach(traceparent: str) -> Any:
    """Make the request's span (a W3C ``traceparent``) the current OpenTelemetry context of this
    task; returns the token for :func:`detach`, or ``None`` when OpenTelemetry is not installed."""
    global _propagator, _missing
    if _propagator is None:
        if _missing:
            return None
        try:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            _missing = True
            log.warning("requests carry a trace context but OpenTelemetry is not installed here: it is not passed on")
            return None
        _propagator = TraceContextTextMapPropagator()
    from opentelemetry import context

    return context.attach(_propagator.extract({"traceparent": traceparent}))


def detach(token: Any) -> None:
    """Restore the context :func:`attach` replaced."""
    if token is not None:
        from opentelemetry import context

        context.detach(token)
