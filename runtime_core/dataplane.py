"""What both front ends ask of the core, free of any transport.

REST (:mod:`runtime_core.rest`) and gRPC (:mod:`runtime_core.grpc`) are thin
adapters over one :class:`DataPlane`: they turn a wire request into a call here
and the answer (a plain value, or a :class:`~runtime_core.errors.RuntimeCoreError`)
into their own status codes. Readiness, metadata and index shaping, the
repository API's access rules and the inference path live here once, so both
front ends answer the same questions the same way.

The data plane never parses a tensor: :meth:`DataPlane.infer` hands the request's
:class:`~runtime_core.envelope.Envelope` to the scheduler and returns the worker's
:class:`~runtime_core.envelope.Outcome`.

It is also where an inference request is observed, once for both front ends: with
``request_log`` or ``tracing`` on, a front end wraps each inference call in
:meth:`DataPlane.observe` and reports only what its transport knows (the status it answered,
the bytes in and out). The :class:`Observation` makes the request's SERVER span and its
``queue``/``compute`` children (:mod:`runtime_core.tracing`) and writes its log line
(:mod:`runtime_core.requestlog`); :meth:`DataPlane.ready_model` and :meth:`DataPlane.infer`
record in it the version that served and the worker's outcome, and hand the span's context
to the worker in the envelope.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime_core import __version__, requestlog
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import Forbidden, ModelNotReady, PayloadTooLarge, Unauthorized, error_from_code
from runtime_core.modelconfig import triton_config
from runtime_core.repository import ModelRecord, ModelRepository, ModelState
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings

if TYPE_CHECKING:
    from runtime_core.runtime import ModelMetadata
    from runtime_core.tracing import RequestSpan, RequestTracer

SERVER_NAME = "runtime-core"
#: The V2 extensions this server implements (``GET /v2`` and ServerMetadata).
EXTENSIONS = ("model_repository", "binary_tensor_data", "statistics")


@dataclass(slots=True)
class ServerState:
    """Readiness of the whole server: not ready while starting and while draining."""

    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


class Observation:
    """One inference request as the server observes it: its span (``tracing``) and its request
    log line (``request_log``). Made by :meth:`DataPlane.observe`; see the module docstring."""

    __slots__ = ("_log", "_span", "_started", "model", "outcome", "protocol", "request_id", "version")

    def __init__(
        self,
        protocol: str,
        span: RequestSpan | None,
        request_id: str,
        model: str,
        version: str,
        log: bool,
    ) -> None:
        self._started = time.perf_counter()
        self._span = span
        self._log = log
        self.protocol = protocol
        self.request_id = request_id
        """The request's id for its log line ("" when ``request_log`` is off): the front end
        sends it back (``X-Request-ID``)."""
        self.model = model
        self.version = version
        self.outcome: Outcome | None = None
        """The worker's outcome of a request that succeeded."""

    @property
    def traceparent(self) -> str:
        """The request's span as a W3C ``traceparent`` for the envelope ("" when not traced)."""
        return self._span.traceparent if self._span is not None else ""

    def route(self, model: str, version: str) -> None:
        """The model the request names, once read from it (gRPC: from the message)."""
        self.model, self.version = model, version
        if self._span is not None:
            self._span.model(model, version)

    def finish(self, *, status: int, status_attribute: str, failed: bool, bytes_in: int, bytes_out: int) -> None:
        """End the observation with what the front end answered: ``status`` (the HTTP status or
        gRPC code) goes on the span as ``status_attribute`` and in the log line; ``failed``:
        the server's error rather than the client's (marks the span failed)."""
        total = time.perf_counter() - self._started
        span = self._span
        if span is not None:
            span.set_attribute(status_attribute, status)
            if failed:
                span.failed()
            if self.outcome is not None:
                span.answered(self.outcome)
        if self._log:
            requestlog.write(
                protocol=self.protocol,
                model=self.model or None,
                version=self.version or None,
                status=status,
                request_id=self.request_id,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                outcome=self.outcome,
                total=total,
            )


class DataPlane:
    """Readiness, metadata, repository index/load/unload and inference, for any front end."""

    def __init__(
        self,
        settings: ServerSettings,
        repository: ModelRepository,
        scheduler: FairScheduler,
        state: ServerState | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.scheduler = scheduler
        self.state = state if state is not None else ServerState()
        self._tracer: RequestTracer | None = None
        if settings.tracing:
            from runtime_core.tracing import RequestTracer  # imports the optional 'tracing' extra

            self._tracer = RequestTracer()
        if settings.request_log:
            requestlog.setup()

    # ------------------------------------------------------------------ health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.state.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | None = None) -> ModelRecord:
        """The model's record; :class:`~runtime_core.errors.ModelNotFound` if there is none."""
        return self.repository.get(name, version or None)

    def model_ready(self, name: str, version: str | None = None) -> tuple[str, bool]:
        """The model's name and whether it is READY."""
        record = self.model(name, version)
        serving = record.pool is None or record.pool.health().serving
        return record.name, record.state is ModelState.READY and serving

    def ready_model(self, name: str, version: str | None = None, observation: Observation | None = None) -> ModelRecord:
        """The model's record if it is READY, else :class:`~runtime_core.errors.ModelNotReady`.
        ``observation``: the inference request's, which logs the version that serves."""
        record = self.model(name, version)
        if record.state is not ModelState.READY:
            raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
        if observation is not None:
            observation.version = record.version or observation.version
        return record

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{"name", "versions"?, "platform", "inputs", "outputs"}``, tensors as ``{"name", "datatype", "shape"}``."""
        record, meta = self._described(name, version)
        body: dict[str, Any] = {"name": record.name, "platform": meta.platform or record.runtime}
        if record.version:  # every version that can be asked for by name, as Triton and KServe list them
            body["versions"] = self.repository.versions(record.name)
        body["inputs"] = [t.to_json() for t in meta.inputs]
        body["outputs"] = [t.to_json() for t in meta.outputs]
        return body

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The ready model's configuration in Triton's shape (see :mod:`runtime_core.modelconfig`)."""
        return triton_config(*self._described(name, version))

    def _described(self, name: str, version: str | None) -> tuple[ModelRecord, ModelMetadata]:
        """The ready model and what it says of its tensors (not ready until it has said)."""
        record = self.ready_model(name, version)
        meta = record.metadata
        if meta is None:
            raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
        return record, meta

    # ------------------------------------------------------------------ inference

    def check_size(self, size: int) -> None:
        """:class:`~runtime_core.errors.PayloadTooLarge` if ``size`` bytes is over ``max_request_size``."""
        limit = self.settings.max_request_size
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit}")

    @property
    def observing(self) -> bool:
        """Whether inference requests are observed (``request_log`` or ``tracing`` on)."""
        return self._tracer is not None or self.settings.request_log

    @contextlib.contextmanager
    def observe(
        self,
        protocol: str,
        *,
        carrier: Mapping[str, str],
        request_id: str | None,
        span_name: str,
        attributes: dict[str, Any],
        model: str = "",
        version: str = "",
    ) -> Iterator[Observation]:
        """Observe one inference request while the block runs: its SERVER span, current in the
        block, continues the trace of ``carrier`` (the request's headers or metadata); its log
        line is written by :meth:`Observation.finish`. ``request_id``: the client's, else one
        is made up (when ``request_log`` is on)."""
        if self.settings.request_log:
            request_id = request_id or uuid.uuid4().hex
        else:
            request_id = ""
        log = self.settings.request_log
        if self._tracer is None:
            yield Observation(protocol, None, request_id, model, version, log)
            return
        with self._tracer.request(span_name, carrier, attributes) as span:
            yield Observation(protocol, span, request_id, model, version, log)

    async def infer(self, model: str, envelope: Envelope, observation: Observation | None = None) -> Outcome:
        """Run one request on ``model`` (the key of a record :meth:`ready_model` returned) and return the
        worker's successful outcome; a failed one is raised as its
        :class:`~runtime_core.errors.RuntimeCoreError`. ``observation``: the request's, whose
        span context goes to the worker in the envelope and which records the outcome."""
        if observation is not None:
            envelope.trace = observation.traceparent
        outcome = await self.scheduler.submit(model, envelope)
        if outcome.code:
            raise error_from_code(outcome.code, outcome.body.decode("utf-8", "replace"), model=model)
        if observation is not None:
            observation.outcome = outcome
        return outcome

    # ------------------------------------------------------------------ repository API

    def authorize(self, authorization: str | None) -> None:
        """The repository API's access rule, given the request's ``Authorization`` value.

        :class:`~runtime_core.errors.Forbidden` when ``repository_api`` is off; with
        ``repository_token`` set, :class:`~runtime_core.errors.Unauthorized` unless
        ``authorization`` is ``Bearer <token>``.
        """
        if not self.settings.repository_api:
            raise Forbidden("the repository API is disabled on this server (repository_api is false)")
        token = self.settings.repository_token
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("the repository API needs 'Authorization: Bearer <token>'")

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """``[{"name", "version"?, "state", "reason", "residency"?}]``: one row per version of
        every model found or loaded."""
        return await self.repository.index(ready_only=ready_only)

    async def load(self, name: str) -> dict[str, Any]:
        """Load (or reload) every version of ``name``."""
        records = await self.repository.load(name)
        return {"name": name, "state": records[0].state.value}

    async def unload(self, name: str) -> dict[str, Any]:
        """Unload every version of ``name``."""
        await self.repository.unload(name)
        return {"name": name, "state": ModelState.UNAVAILABLE.value}
