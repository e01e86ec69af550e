"""Typed application keys, declared in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runtime_core.dataplane import DataPlane, Observation
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
#: Request key: the :class:`~runtime_core.dataplane.Observation` of an inference request
#: (its span and log line), set by the observing middleware when ``request_log`` or
#: ``tracing`` is on. aiohttp 3.14 added typed request keys and warns about plain strings.
OBSERVATION: Any = (
    web.RequestKey("observation", Observation) if hasattr(web, "RequestKey") else "runtime_core.observation"
)
