"""One ``mlserver.MLModel`` behind the ``mlserver`` runtime: MLServer's side of the adapter.

Imported only where models run (the runtime's template, hosts and workers; the main
process too with ``parallel_workers: 0``), never by the plugin module that the main
process imports to build its registry. In the model's worker (or host) it does what
MLServer 1.7 does for one model:

1. reads ``model-settings.json`` with MLServer's own loader into MLServer's
   ``ModelSettings`` (name defaulting to the folder, ``parameters.uri`` relative to the
   folder), imports ``implementation`` with the model folder on ``sys.path``, builds the
   class with those settings and awaits ``load()``;
2. per request: builds MLServer's ``InferenceRequest`` from the bytes the client sent
   (:mod:`runtime_core_mlserver.wire`), gives it an id when it has none, puts the request's
   headers (and MLServer's CloudEvents headers) in ``parameters.headers``, awaits
   ``predict()``, sets the response's id to the request's, takes the headers back out of
   the response, and writes the response as MLServer does;
3. with ``max_batch_size`` > 1, merges the requests that arrived together with MLServer's
   own ``BatchedRequests`` (along the first axis, parameters merged) into one ``predict``
   and splits the response back; if the merged call fails, each request runs alone so that
   only the one at fault fails.

What MLServer has and this runtime does not: streaming (``predict_stream``, the
``infer_stream`` route: 400 naming it), per-model environments
(``parameters.environment_tarball``: the load fails naming it), response headers (a
response's ``parameters.headers`` are taken out of the body, as MLServer does, but not sent
as HTTP headers or gRPC trailing metadata).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from mlserver import MLModel
from mlserver.batching.requests import BatchedRequests
from mlserver.cloudevents import CloudEventsMiddleware
from mlserver.errors import MLServerError
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelSettings as MLServerModelSettings
from mlserver.settings import Settings as MLServerSettings
from mlserver.types import InferenceRequest, InferenceResponse, Parameters
from mlserver.utils import generate_uuid, insert_headers

from runtime_core import InvalidRequest, client_message
from runtime_core.envelope import Envelope, Wire
from runtime_core.runtime import RawReply, RuntimeContext
from runtime_core_mlserver import wire
from runtime_core_mlserver.endpoints import Endpoint, endpoints_of

__all__ = ["ModelAdapter"]

log = logging.getLogger("runtime_core_mlserver")


class ModelAdapter:
    """A loaded ``MLModel`` and the per-request work MLServer's data plane does around it."""

    def __init__(self, model: Any, endpoints: list[Endpoint], context: RuntimeContext, batch: bool) -> None:
        self._model = model
        self._endpoints = {(e.method, e.path): e for e in endpoints}
        self.context = context
        # MLServer's data plane adds CloudEvents headers to every request.
        self._cloudevents = CloudEventsMiddleware(MLServerSettings())
        self._batch = batch

    @property
    def endpoints(self) -> tuple[tuple[str, str], ...]:
        """The model's own endpoints, then MLServer's streaming routes (answered with an error)."""
        return tuple(self._endpoints) + self._stream_routes()

    @classmethod
    async def load(cls, path: str, context: RuntimeContext, max_batch_size: int) -> ModelAdapter:
        """Read ``path`` (``model-settings.json``) as MLServer does, import and load the class."""
        label = f"model {context.model_name!r} ({path})"
        settings = _mlserver_settings(path, label, context)
        implementation = settings.implementation_
        cls_: Any
        try:
            cls_ = settings.implementation  # imports with the model's folder on sys.path, as MLServer
        except Exception as exc:
            raise ValueError(f"{label}: implementation {implementation!r} cannot be imported: {exc}") from None
        if not (isinstance(cls_, type) and issubclass(cls_, MLModel)):
            raise ValueError(f"{label}: implementation {implementation!r} is not an mlserver.MLModel subclass")
        methods: Any = cls_  # mlserver ships no type information: its classes are Any to mypy
        if methods.predict is MLModel.predict:
            streams = methods.predict_stream is not MLModel.predict_stream
            raise ValueError(
                f"{label}: {implementation} implements "
                + ("only predict_stream; streaming is not supported by runtime-core" if streams else "no predict()")
            )
        model = cls_(settings)
        try:
            ready = await model.load()
        except Exception as exc:
            raise RuntimeError(f"{label}: {implementation}.load() failed: {exc}") from exc
        if ready is False:  # MLServer takes load()'s result as the model's readiness
            raise RuntimeError(f"{label}: {implementation}.load() returned False (not ready)")
        model.ready = True
        return cls(model, endpoints_of(model, label), context, max_batch_size > 1)

    def _stream_routes(self) -> tuple[tuple[str, str], ...]:
        """MLServer's streaming routes of this model: answered with a clear error."""
        base = f"/v2/models/{self.context.model_name}"
        bases = [base] + ([f"{base}/versions/{self.context.version}"] if self.context.version else [])
        return tuple(("POST", f"{b}/{verb}") for b in bases for verb in ("infer_stream", "generate_stream"))

    async def unload(self) -> None:
        await self._model.unload()

    # ------------------------------------------------------------------ requests

    async def infer(self, envelopes: list[Envelope]) -> list[RawReply | Exception]:
        replies: list[RawReply | Exception | None] = [None] * len(envelopes)
        pending: list[tuple[int, InferenceRequest, Wire, bool]] = []
        for i, envelope in enumerate(envelopes):
            try:
                if envelope.wire is Wire.CUSTOM:
                    replies[i] = await self._endpoint(envelope)
                    continue
                request, use_raw = wire.decode(envelope)
                self._prepare(request, envelope)
                pending.append((i, request, envelope.wire, use_raw))
            except Exception as exc:
                replies[i] = _translate(exc)
        if self._batch and len(pending) > 1:
            responses = await self._predict_batch([request for _, request, _, _ in pending])
        else:
            responses = [await self._predict_one(request) for _, request, _, _ in pending]
        for (i, request, kind, use_raw), response in zip(pending, responses, strict=True):
            try:
                if isinstance(response, Exception):
                    raise response
                replies[i] = wire.encode(self._finish(request, response), kind, use_raw)
            except Exception as exc:
                replies[i] = _translate(exc)
        return [r if r is not None else RuntimeError("no reply") for r in replies]

    def _prepare(self, request: InferenceRequest, envelope: Envelope) -> None:
        """What MLServer's data plane does to a request before ``predict``."""
        if request.id is None:
            request.id = generate_uuid()
        insert_headers(request, wire.headers_of(envelope))
        self._cloudevents.request_middleware(request, self._model.settings)

    def _finish(self, request: InferenceRequest, response: Any) -> InferenceResponse:
        """What MLServer's data plane does to a response after ``predict``."""
        if not isinstance(response, InferenceResponse):
            got = "nothing" if response is None else "something other than an mlserver InferenceResponse"
            raise TypeError(f"{type(self._model).__qualname__}.predict() returned {got}")
        response.id = request.id
        # MLServer's data plane adds its CloudEvents headers to the response's parameters.headers
        # and its front end takes every header out again into HTTP headers (not sent here, see
        # the module docstring): what stays in the body is parameters without headers, and
        # parameters that were unset become an empty object. The same, without building the
        # headers only to drop them.
        if response.parameters is None:
            response.parameters = Parameters()
        elif response.parameters.headers is not None:
            response.parameters.headers = None
        return response

    async def _predict_one(self, request: InferenceRequest) -> InferenceResponse | Exception:
        try:
            response: InferenceResponse = await self._model.predict(request)
            return response
        except Exception as exc:
            return exc

    async def _predict_batch(self, requests: list[InferenceRequest]) -> list[InferenceResponse | Exception]:
        try:
            batched = BatchedRequests({str(n): request for n, request in enumerate(requests)})
            merged = await self._model.predict(batched.merged_request)
            parts = batched.split_response(merged)
            return [parts[str(n)] for n in range(len(requests))]
        except Exception:
            log.debug("model %r: a merged batch failed; running its requests one by one", self.context.model_name)
            return [await self._predict_one(request) for request in requests]

    async def _endpoint(self, envelope: Envelope) -> RawReply:
        call = orjson.loads(envelope.payload)
        method, path = call.get("method", ""), call.get("path", "")
        endpoint: Endpoint | None = self._endpoints.get((method, path))
        if endpoint is None:
            if (method, path) in self._stream_routes():
                raise InvalidRequest(
                    f"model {self.context.model_name!r}: streaming inference (predict_stream) is not supported"
                    " by runtime-core's mlserver runtime; use /infer"
                )
            raise InvalidRequest(f"model {self.context.model_name!r} has no endpoint {method} {path}")
        return RawReply(await endpoint.call(call.get("query") or {}, call.get("body") or ""))


def _mlserver_settings(path: str, label: str, context: RuntimeContext) -> MLServerModelSettings:
    try:
        settings = load_model_settings(path)
    except Exception as exc:
        raise ValueError(f"{label}: MLServer cannot read these model settings: {exc}") from None
    # The name and version the server serves the model under (a Triton-style version
    # folder gives both), which MLServer's loader alone would not know.
    settings.name = context.model_name
    if settings.parameters is not None:
        if settings.parameters.environment_tarball:
            raise ValueError(
                f"{label}: parameters.environment_tarball is not supported by the mlserver runtime;"
                " install the model's requirements into the server's environment instead"
            )
        if context.version is not None:
            settings.parameters.version = context.version
    return settings


def _translate(exc: Exception) -> Exception:
    """MLServer's errors for bad input (a 4xx ``status_code``) as a 400 with their message;
    anything else as it is (answered 500, logged with its traceback)."""
    status = getattr(exc, "status_code", 500) if isinstance(exc, MLServerError) else 500
    if isinstance(status, int) and 400 <= status < 500:
        return InvalidRequest(client_message(str(exc)))
    return exc
