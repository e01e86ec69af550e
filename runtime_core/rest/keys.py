"""Typed application keys, declared in one place."""

from __future__ import annotations

from aiohttp import web

from runtime_core.dataplane import DataPlane
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
#: Request key: the worker's :class:`~runtime_core.envelope.Outcome` of an inference, for the request log.
OUTCOME = "runtime_core.outcome"
