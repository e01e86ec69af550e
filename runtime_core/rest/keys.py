"""Typed application keys, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from runtime_core.metrics import ServerMetrics
from runtime_core.repository import ModelRepository
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings


@dataclass(slots=True)
class ServerState:
    """Readiness of the whole server: not ready while starting and while draining."""

    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


SETTINGS = web.AppKey("settings", ServerSettings)
REPOSITORY = web.AppKey("repository", ModelRepository)
SCHEDULER = web.AppKey("scheduler", FairScheduler)
STATE = web.AppKey("state", ServerState)
METRICS = web.AppKey("metrics", ServerMetrics)
#: The OpenAPI document (JSON bytes), read once at startup.
OPENAPI = web.AppKey("openapi", bytes)
