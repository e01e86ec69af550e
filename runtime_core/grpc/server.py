"""``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on grpcio's asyncio server.

Data flow::

    client ──ModelInfer(bytes)──> route(): model name ──> DataPlane.infer(Envelope(GRPC)) ──> scheduler
       ^                                                                                      │
       └──────────── ModelInferResponse bytes, encoded by the worker <────────────────────────┘

The service runs in the main process on the server's event loop, beside the
REST app, over the same :class:`~runtime_core.dataplane.DataPlane` (scheduler,
pools, repository). ``ModelInfer`` is registered without a deserializer: the
main process reads only the model's name and version from the request bytes
(:func:`~runtime_core.codecs.grpc.route`) and forwards the bytes untouched;
the worker decodes the tensors and serializes the reply, which goes back
as it is. The other RPCs are small and are answered here.

What is bounded: a request message is at most ``max_request_size`` bytes (grpcio
refuses a larger one with RESOURCE_EXHAUSTED before it is read in full); the
number of waiting requests is bounded per model by the scheduler's queue
(RESOURCE_EXHAUSTED when full). Replies are not size-limited here.

Timeout: the call's gRPC deadline becomes the envelope's deadline, so a request
still queued when it passes never reaches a runtime (DEADLINE_EXCEEDED).
Tracing (``tracing = true``): each ModelInfer call gets a SERVER span continuing the trace of
its ``traceparent`` metadata, with ``queue`` and ``compute`` children, and the span's context
goes to the worker in the envelope; the data plane makes them
(:meth:`~runtime_core.dataplane.DataPlane.observe`, :mod:`runtime_core.tracing`). UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS mark the span failed,
as OpenTelemetry's conventions for gRPC servers say; the other codes are the client's.

Request log (``request_log = true``): one JSON line per ModelInfer call, written by the data
plane as for REST, with
``"protocol": "grpc"`` and the gRPC status code as ``status``; the request id is the call's
``x-request-id`` metadata, else one made up here, and is sent back in the initial metadata.

Cancel: when the client cancels (or its deadline passes) grpcio cancels the
handler's task; the scheduler then drops the queued request, as for a REST
client that hangs up. Worker death: the pool fails the request with
:class:`~runtime_core.errors.WorkerDied`, answered UNAVAILABLE. Shutdown:
:meth:`GrpcServer.set_serving` turns the health service to NOT_SERVING while
draining, and :meth:`GrpcServer.stop` lets calls in flight finish within a grace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import orjson
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime_core.codecs.grpc import route
from runtime_core.codecs.validation import SHARED_MEMORY_UNSUPPORTED
from runtime_core.dataplane import DataPlane, Observation
from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.errors import RuntimeCoreError, SettingsError
from runtime_core.grpc.status import status_of
from runtime_core.proto import grpc_service_pb2 as pb
from runtime_core.requestlog import REQUEST_ID
from runtime_core.sanitize import client_message
from runtime_core.stats import ServerStatistics

if TYPE_CHECKING:
    from runtime_core.repository import ModelRecord

log = logging.getLogger("runtime_core.grpc")

SERVICE = "inference.GRPCInferenceService"

Request = TypeVar("Request")
Reply = TypeVar("Reply")
Method = Callable[[Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Reply]]


def _answering_errors(method: Method[Request, Reply]) -> Method[Request, Reply]:
    """Turn core errors into their gRPC status, anything else into INTERNAL (traceback logged)."""

    @functools.wraps(method)
    async def call(request: Request, context: grpc.aio.ServicerContext[Any, Any]) -> Reply:
        try:
            return await method(request, context)
        except RuntimeCoreError as exc:
            message = exc.message
            if isinstance(exc, SettingsError):  # settings errors name server files: keep them in the log
                log.warning("%s", exc.message)
                message = client_message(exc.message)
            await context.abort(status_of(exc), message)
        except Exception:
            log.exception("unexpected error in gRPC method %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return call


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


#: Codes that mark a call's span failed: the server's errors, not the client's.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

#: The request id's metadata key (gRPC keys are lower case).
_REQUEST_ID = REQUEST_ID.lower()
#: The span attributes of every ModelInfer call.
_SPAN_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "ModelInfer"}


#: The fields of Triton's ``RepositoryIndexResponse.ModelIndex`` (the REST index has more).
_INDEX_FIELDS = frozenset({"name", "version", "state", "reason"})


class InferenceService:
    """The RPCs of ``inference.GRPCInferenceService``: each a thin adapter over the data plane
    (and the statistics the REST front end serves too)."""

    def __init__(self, plane: DataPlane, statistics: ServerStatistics) -> None:
        self.plane = plane
        self.statistics = statistics

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        _, ready = self.plane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta.get("versions", []),
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if self.plane.observing:
            return await self._observed_infer(payload, context)
        name, version = route(payload)
        return (await self._infer(self.plane.ready_model(name, version or None), payload, context)).body

    async def _infer(
        self,
        record: ModelRecord,
        payload: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        observation: Observation | None = None,
    ) -> Outcome:
        arrived = time.time()
        remaining = context.time_remaining()
        deadline = arrived + remaining if remaining is not None else 0.0
        envelope = Envelope(payload, wire=Wire.GRPC, deadline=deadline, arrived=arrived)
        if record.raw_requests:  # its runtime reads requests itself: with their metadata, as headers
            metadata = context.invocation_metadata() or ()
            envelope.headers = orjson.dumps({m.key: m.value for m in metadata if isinstance(m.value, str)})
        return await self.plane.infer(record.key, envelope, observation)

    async def _observed_infer(self, payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """ModelInfer observed by the data plane (its span and log line): this adds what only
        gRPC knows, the status code and whether it is the server's error."""
        metadata = {m.key: m.value for m in context.invocation_metadata() or () if isinstance(m.value, str)}
        with self.plane.observe(
            "grpc",
            carrier=metadata,
            request_id=metadata.get(_REQUEST_ID),
            span_name="infer",  # named after the model once routed
            attributes=dict(_SPAN_ATTRIBUTES),
        ) as observation:
            if observation.request_id:
                await context.send_initial_metadata(((_REQUEST_ID, observation.request_id),))
            code = grpc.StatusCode.INTERNAL  # anything but a core error: _answering_errors says INTERNAL
            try:
                name, version = route(payload)
                observation.route(name, version)
                record = self.plane.ready_model(name, version or None, observation)
                outcome = await self._infer(record, payload, context, observation)
                code = grpc.StatusCode.OK
            except RuntimeCoreError as exc:
                code = status_of(exc)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                answered = observation.outcome
                observation.finish(
                    status=code.value[0],
                    status_attribute="rpc.grpc.status_code",
                    failed=code in _SERVER_ERRORS,
                    bytes_in=len(payload),
                    bytes_out=len(answered.body) if answered is not None else 0,
                )
        return outcome.body

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryIndexResponse:
        self.plane.authorize(_metadata(context, "authorization"))
        index = pb.RepositoryIndexResponse.ModelIndex
        rows = await self.plane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[index(**{k: v for k, v in item.items() if k in _INDEX_FIELDS}) for item in rows]
        )

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelLoadResponse:
        self.plane.authorize(_metadata(context, "authorization"))
        await self.plane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelUnloadResponse:
        self.plane.authorize(_metadata(context, "authorization"))
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        doc = self.statistics.model_stats(request.name or None, request.version or None)
        # The dictionaries have the message's field names (Triton's JSON and gRPC shapes agree).
        return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(**item) for item in doc["model_stats"]])

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.plane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def shared_memory(self, payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Triton's System/CudaSharedMemory* RPCs: the feature does not exist here."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SHARED_MEMORY_UNSUPPORTED)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method table for grpcio's generic handler."""

        def unary(method: Method[Any, Any], request: Any = None, reply: Any = None) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                _answering_errors(method),
                request_deserializer=request.FromString if request is not None else None,
                response_serializer=reply.SerializeToString if reply is not None else None,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
                "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
                # bytes in, bytes out: the worker parses the request and serializes the reply
                "ModelInfer": unary(self.model_infer),
                "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
                "RepositoryModelLoad": unary(
                    self.repository_model_load, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
                ),
                "RepositoryModelUnload": unary(
                    self.repository_model_unload, pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
                ),
                "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
                "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
                **{
                    # not through _answering_errors: the abort is the answer, not an error to map
                    f"{kind}SharedMemory{call}": grpc.unary_unary_rpc_method_handler(self.shared_memory)
                    for kind in ("System", "Cuda")
                    for call in ("Status", "Register", "Unregister")
                },
            },
        )


class _Arrivals(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio ships no type for it
    """Notes when the last call arrived, for :meth:`GrpcServer.stop`'s linger."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.last = time.monotonic()
        return await continuation(handler_call_details)


#: How long no call must have arrived before the port closes, and the most the stop waits for that.
_QUIET = 0.25
_LINGER = 1.0


class GrpcServer:
    """The gRPC front end: the inference service and the standard health service on one port."""

    def __init__(self, plane: DataPlane, statistics: ServerStatistics) -> None:
        self.plane = plane
        self.port = 0
        settings = plane.settings
        self._arrivals = _Arrivals()
        self._server = grpc.aio.server(
            interceptors=(self._arrivals,),
            options=[
                ("grpc.max_receive_message_length", settings.max_request_size),
                ("grpc.max_send_message_length", -1),
                # A port already taken must fail the start, not be shared with another server.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server.add_generic_rpc_handlers((InferenceService(plane, statistics).handler(),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port. Raises
        :class:`OSError` when the address cannot be bound."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = int(self._server.add_insecure_port(address))
        except RuntimeError as exc:  # grpcio reports a failed bind this way
            raise OSError(f"cannot listen on {address}") from exc
        if not bound:
            raise OSError(f"cannot listen on {address}")
        self.port = bound
        await self.set_serving(False)
        await self._server.start()
        return bound

    async def set_serving(self, serving: bool) -> None:
        """Health: SERVING for the server ("") and the inference service, or NOT_SERVING."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self._health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Close the port; calls in flight get ``grace`` seconds to finish.

        Called once the scheduler has drained, while calls are answered "shutting down". grpcio's
        stop cancels (CANCELLED, under the client) a call that reached the port but not yet its
        handler; the clients whose last calls the drain just answered send their next ones at
        that very moment (issue 20). So the port stays open until no call has arrived for
        ``_QUIET`` seconds (at most ``_LINGER``, within ``grace``): those calls get their
        "shutting down" answer, and later ones find the port closed (UNAVAILABLE)."""
        started = time.monotonic()
        deadline = started + min(_LINGER, grace)
        while time.monotonic() < deadline and time.monotonic() - self._arrivals.last < _QUIET:
            await asyncio.sleep(0.02)
        await self._server.stop(max(0.0, grace - (time.monotonic() - started)))
