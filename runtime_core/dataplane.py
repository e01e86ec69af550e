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
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from runtime_core import __version__
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import Forbidden, ModelNotReady, PayloadTooLarge, Unauthorized, error_from_code
from runtime_core.modelconfig import triton_config
from runtime_core.repository import ModelRecord, ModelRepository, ModelState
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings

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

    def ready_model(self, name: str, version: str | None = None) -> ModelRecord:
        """The model's record if it is READY, else :class:`~runtime_core.errors.ModelNotReady`."""
        record = self.model(name, version)
        if record.state is not ModelState.READY:
            raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
        return record

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{"name", "versions"?, "platform", "inputs", "outputs"}``, tensors as ``{"name", "datatype", "shape"}``."""
        record = self.ready_model(name, version)
        meta = record.metadata
        if meta is None:
            raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
        body: dict[str, Any] = {"name": record.name, "platform": meta.platform or record.runtime}
        if record.version:  # every version that can be asked for by name, as Triton and KServe list them
            body["versions"] = self.repository.versions(record.name)
        body["inputs"] = [t.to_json() for t in meta.inputs]
        body["outputs"] = [t.to_json() for t in meta.outputs]
        return body

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The ready model's configuration in Triton's shape (see :mod:`runtime_core.modelconfig`)."""
        record = self.ready_model(name, version)
        meta = record.metadata
        if meta is None:
            raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
        return triton_config(record, meta)

    # ------------------------------------------------------------------ inference

    def check_size(self, size: int) -> None:
        """:class:`~runtime_core.errors.PayloadTooLarge` if ``size`` bytes is over ``max_request_size``."""
        limit = self.settings.max_request_size
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit}")

    async def infer(self, model: str, envelope: Envelope) -> Outcome:
        """Run one request on ``model`` (the key of a record :meth:`ready_model` returned) and return the
        worker's successful outcome; a failed one is raised as its
        :class:`~runtime_core.errors.RuntimeCoreError`."""
        outcome = await self.scheduler.submit(model, envelope)
        if outcome.code:
            raise error_from_code(outcome.code, outcome.body.decode("utf-8", "replace"), model=model)
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

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """``[{"name", "version"?, "state", "reason", "residency"?}]``: one row per version of
        every model found or loaded."""
        return self.repository.index(ready_only=ready_only)

    async def load(self, name: str) -> dict[str, Any]:
        """Load (or reload) every version of ``name``."""
        records = await self.repository.load(name)
        return {"name": name, "state": records[0].state.value}

    async def unload(self, name: str) -> dict[str, Any]:
        """Unload every version of ``name``."""
        await self.repository.unload(name)
        return {"name": name, "state": ModelState.UNAVAILABLE.value}
