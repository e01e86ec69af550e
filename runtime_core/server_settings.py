"""The server's settings: what each setting means, its default and its bounds.

Every field is also ``RUNTIME_CORE_<FIELD>`` in the environment; where the values come
from, and in which order, is :mod:`runtime_core.server_sources`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime_core.limits import cpu_count

__all__ = ["ENV_PREFIX", "LAZY_LOAD_AUTO_ABOVE", "CorsSettings", "ServerSettings"]

ENV_PREFIX = "RUNTIME_CORE_"

#: ``lazy_load: "auto"`` loads lazily above this many model versions: eager loading at start
#: loads the models into their runtime's host one at a time, so start-up grows with their
#: number (docs/benchmarks.md, "Ten thousand models").
LAZY_LOAD_AUTO_ABOVE = 1000


class CorsSettings(BaseModel):
    """Cross-origin resource sharing for browser clients: MLServer's ``cors_settings``, with
    its keys and defaults. Unset (the default): no CORS headers are sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API (``"*"``: any)."""

    allow_origin_regex: str | None = None
    """A regular expression; origins matching it in full are allowed too."""

    allow_credentials: bool = False
    """Send ``Access-Control-Allow-Credentials: true`` (cookies and authorization headers)."""

    allow_methods: list[str] = Field(default_factory=lambda: ["GET"])
    """Methods a preflight may ask for (``"*"``: any)."""

    allow_headers: list[str] = Field(default_factory=list)
    """Request headers a preflight may ask for, besides the always-safe ones (``"*"``: any)."""

    expose_headers: list[str] = Field(default_factory=list)
    """Response headers the browser may show the page."""

    max_age: int = Field(600, ge=0)
    """Seconds a browser may cache a preflight answer."""

    @field_validator("allow_origin_regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class ServerSettings(BaseSettings):
    """Settings of the server process. Every field is also ``RUNTIME_CORE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        protected_namespaces=(),
    )

    model_repository: Path | None = None
    """Folder searched (recursively) for ``model-settings.json`` files."""

    host: str = "0.0.0.0"
    """Address the HTTP server binds."""

    http_port: int = Field(8080, ge=0, le=65535)
    """TCP port of the V2 REST API (0 picks a free port)."""

    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Also serve the Prometheus ``/metrics`` on this port (MLServer's key; its default is
    8082). Unset: ``/metrics`` is served on ``http_port`` only."""

    grpc_port: int = Field(8081, ge=0, le=65535)
    """TCP port of the V2 gRPC API (0 picks a free port). ``MLSERVER_GRPC_PORT`` is read too,
    below ``RUNTIME_CORE_GRPC_PORT``."""

    grpc_enabled: bool = True
    """Serve the V2 gRPC API; false serves REST alone (``--no-grpc``)."""

    parallel_workers: int = Field(
        4,
        ge=0,
        # Not "parallel_workers" itself among the aliases: the environment source would then
        # read an unprefixed PARALLEL_WORKERS variable. The field name still works
        # (populate_by_name) for flags and settings.json.
        validation_alias=AliasChoices("RUNTIME_CORE_PARALLEL_WORKERS", "MLSERVER_MODEL_PARALLEL_WORKERS"),
    )
    """Default most worker processes of each model (workers start as requests pile up and
    retire when idle, see ``min_workers``); 0 runs inference in the main process.
    ``MLSERVER_MODEL_PARALLEL_WORKERS`` is read as an alias."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level. ``info`` prints one line per model event, nothing per request."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    max_request_size: int = Field(100 * 1024 * 1024, gt=0)
    """Largest request body accepted, in bytes; larger bodies get 413 before they are read."""

    max_elements: int = Field(64 * 1024 * 1024, ge=0)
    """Most tensor elements one request may hold, over all its inputs (0: no limit); checked
    in the worker from the shapes, before any data is converted. Over it: 413."""

    worker_timeout: float = Field(60.0, gt=0)
    """Seconds a worker may spend on one request before it is killed and replaced."""

    worker_overdue_after: float = Field(1.0, gt=0)
    """Seconds a worker's oldest request may be out (at most half of ``worker_timeout``)
    before dispatch passes the worker over for a sibling that can take the request: a
    worker that may be hung gets no more requests while another can run them."""

    host_stall_after: float = Field(0.05, gt=0)
    """Seconds a runtime's shared host may have requests and answer none before it counts as
    stalled (a model's long or hung call): the host's other models with requests waiting
    then move to a sibling host, and the model whose call it is gets workers of its own."""

    host_answer_hold: float = Field(0.0001, ge=0, le=0.01)
    """Most seconds a shared host holds a model's answers while the next models' requests of
    the same wake-up run, when those are surely cheap (a compute-only runtime, small requests,
    calls measured shorter than this), so that they leave in one write: traffic spread over
    many models then costs about as much CPU per request as one model's. 0 sends each
    model's answers as soon as they are done."""

    min_workers: int = Field(0, ge=0)
    """Dedicated workers each model keeps even when idle (at most its ``parallel_workers``).
    With 0, a quiet model is served by its runtime's shared host process and costs no
    process of its own; workers are forked when its requests pile up."""

    worker_idle_timeout: float = Field(30.0, gt=0)
    """Seconds without a request after which a dedicated worker is retired (down to
    ``min_workers``)."""

    memory_budget: int | None = Field(None, ge=0)
    """Bytes of loaded models kept resident; past it, the models idle longest are evicted
    (and brought back on their next request). Default: half the memory of the machine or
    of the container's cgroup limit."""

    lazy_load: bool | Literal["auto"] = "auto"
    """Load each model on its first request instead of at start: the server is ready at
    once, however many models the repository holds. ``"auto"`` (the default): lazy when the
    repository holds more than ``LAZY_LOAD_AUTO_ABOVE`` (1,000) model versions, eager
    otherwise."""

    @field_validator("lazy_load", mode="before")
    @classmethod
    def _parse_lazy_load(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return value

    def lazy_for(self, models: int) -> bool:
        """Whether models load on their first request, for a repository of ``models`` versions."""
        if self.lazy_load == "auto":
            return models > LAZY_LOAD_AUTO_ABOVE
        return self.lazy_load

    max_concurrent_loads: int = Field(default_factory=cpu_count, ge=1)
    """How many models load at once, so that peak memory does not multiply."""

    pipeline_depth: int = Field(2, ge=1, le=64)
    """Requests sent ahead to one worker (bounded pipelining)."""

    max_queue_size: int = Field(1024, ge=1)
    """Default bound of each model's queue; a full queue answers 503."""

    max_inflight: int | None = Field(None, ge=1)
    """Server-wide budget of requests in flight in workers while two or more models have work;
    default: two full batches (16 requests) per usable CPU core."""

    cpu_priority: bool = True
    """Give workers a nice value from their model's weight, and while a model within its means
    has work, run saturated models' workers at SCHED_IDLE so that it preempts them."""

    watch: bool = False
    """Poll the model repository and load new, reload changed and unload removed models."""

    watch_interval: float = Field(1.0, gt=0)
    """Seconds between two polls of the model repository when ``watch`` is on."""

    read_timeout: float = Field(30.0, gt=0)
    """Seconds a client has to send a request's headers (counted from the connection or the
    previous response, so it also closes idle keep-alive connections), and the longest pause
    while it sends the body. A connection too slow with its headers is closed; a body that
    stalls longer is answered 408."""

    shutdown_grace: float = Field(30.0, ge=0)
    """Seconds that queued and running requests get to finish after SIGTERM or SIGINT."""

    startup_timeout: float = Field(600.0, gt=0)
    """Seconds a model's workers may take to load before the load is reported failed."""

    access_log: bool = False
    """Log one line per HTTP request (aiohttp's access log, logger ``aiohttp.access``)."""

    tracing: bool = False
    """Make an OpenTelemetry span per inference request (REST and gRPC), child of the caller's
    ``traceparent``, with ``queue`` and ``compute`` child spans, and run the runtime's
    ``predict`` in the request span's context (needs the ``tracing`` extra; spans go to the
    tracer provider the application configured)."""

    request_log: bool = False
    """Log one JSON line per inference request, REST or gRPC (logger ``runtime_core.requests``):
    protocol, model, version, status, request id, bytes in and out, queue, compute and total
    milliseconds."""

    log_format: Literal["text", "json"] = "text"
    """``text``: human-readable lines; ``json``: one JSON object per line (time, level, logger,
    message, model), from the server and from its workers."""

    repository_api: bool = True
    """Serve the repository endpoints (index, load, unload); when false they answer 403."""

    repository_token: str | None = None
    """When set, the repository endpoints require ``Authorization: Bearer <token>`` (else 401)."""

    cors_settings: CorsSettings | None = None
    """CORS for browser clients (MLServer's key and sub-keys); unset: no CORS headers."""

    load_models_at_startup: bool = True
    """Load every model of the repository at start; when false, models are loaded only through
    the repository API (MLServer's key of the same name)."""

    pool_backend: Literal["process", "ray"] = "process"
    """Where models' workers run by default: ``process`` (local worker processes) or ``ray``
    (Ray actors anywhere in a Ray cluster; needs ``pip install 'runtime-core[ray]'``). A
    model's own ``backend`` wins."""

    ray_address: str | None = None
    """The Ray cluster for the ``ray`` backend, e.g. ``127.0.0.1:6379``; unset: a local Ray
    instance is started."""

    model_name: str | None = Field(
        None, validation_alias=AliasChoices("RUNTIME_CORE_MODEL_NAME", "MLSERVER_MODEL_NAME")
    )
    """Single-model layout (KServe): the name of the one model served from a repository folder
    that has no ``model-settings.json``; default: the folder's name. ``MLSERVER_MODEL_NAME``
    is read as an alias."""

    model_runtime: str | None = Field(
        None, validation_alias=AliasChoices("RUNTIME_CORE_MODEL_RUNTIME", "MLSERVER_MODEL_IMPLEMENTATION")
    )
    """Single-model layout: the runtime of that model (a name or an alias such as
    ``mlserver_sklearn.SKLearnModel``, read from ``MLSERVER_MODEL_IMPLEMENTATION`` too);
    default: inferred from the model file's suffix."""

    @field_validator("model_name", "model_runtime", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # KServe fills these from templates such as {{.Labels.modelClass}}, empty when unset.
        return None if isinstance(value, str) and not value.strip() else value

    status_page: bool = True
    """Serve the live status page at ``/`` (and the JSON it polls, ``/status.json``); when false
    they answer 404. The page shows only what the V2 endpoints already expose."""
