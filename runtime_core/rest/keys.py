"""Typed application keys, declared in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runtime_core.dataplane import DataPlane
from runtime_core.envelope import Outcome
from runtime_core.metrics import ServerMetrics
from runtime_core.settings import ServerSettings
from runtime_core.stats import ServerStatistics

SETTINGS = web.AppKey("settings", ServerSettings)
#: Everything the handlers ask of the core: readiness, metadata, repository API, inference.
DATAPLANE = web.AppKey("dataplane", DataPlane)
METRICS = web.AppKey("metrics", ServerMetrics)
STATISTICS = web.AppKey("statistics", ServerStatistics)
#: The OpenAPI document (JSON bytes), read once at startup.
OPENAPI = web.AppKey("openapi", bytes)
#: Request key: the worker's :class:`~runtime_core.envelope.Outcome` of an inference, for the
#: request log and tracing. aiohttp 3.14 added typed request keys and warns about plain strings.
OUTCOME: Any = web.RequestKey("outcome", Outcome) if hasattr(web, "RequestKey") else "runtime_core.outcome"
#: Request key: the W3C ``traceparent`` of the request's span, set by the tracing middleware
#: for the envelope (absent when tracing is off).
TRACEPARENT: Any = web.RequestKey("traceparent", str) if hasattr(web, "RequestKey") else "runtime_core.traceparent"
#: Request key: the version of the model that served an inference (the one the unversioned
#: route picked), for the request log.
SERVED_VERSION: Any = (
    web.RequestKey("served_version", str) if hasattr(web, "RequestKey") else "runtime_core.served_version"
)
