"""The ``mlserver`` runtime: any ``mlserver.MLModel`` subclass, run in runtime-core's workers.

A model folder written for MLServer (``model-settings.json`` naming ``implementation``)
loads here unchanged; :mod:`runtime_core_mlserver.adapter` does what MLServer 1.7 does for
the model. This module imports nothing of MLServer: the main process imports it (through
the plugin module) to build its registry, and must stay free of MLServer's import cost and
of its generated protobuf module, which cannot share a process with tritonclient's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from runtime_core import InferenceRequest, InferenceResponse, Runtime
from runtime_core.envelope import Envelope
from runtime_core.runtime import ModelMetadata, RawReply

if TYPE_CHECKING:
    from runtime_core_mlserver.adapter import ModelAdapter

__all__ = ["MLServerRuntime"]

_ADAPTER = "runtime_core_mlserver.adapter"


class MLServerRuntime(Runtime):
    """Serves the ``mlserver.MLModel`` subclass that ``implementation`` names."""

    name = "mlserver"
    raw_requests = True
    # share_loaded_model stays False: an MLModel may hold threads, sockets or event-loop
    # objects that do not survive fork, so each dedicated worker loads it itself, as each of
    # MLServer's parallel workers does.

    @classmethod
    def preload(cls) -> None:
        # MLServer, its types, converters and codecs: imported once in the template, shared
        # by every host and worker forked from it.
        importlib.import_module(_ADAPTER)
        importlib.import_module("mlserver.codecs")
        importlib.import_module("mlserver.grpc.converters")

    async def load(self) -> None:
        path = self.settings.path
        if path is None:
            raise ValueError(f"model {self.context.model_name!r}: the mlserver runtime needs its model-settings.json")
        adapter: type[ModelAdapter] = importlib.import_module(_ADAPTER).ModelAdapter
        self._adapter = await adapter.load(str(path), self.context, self.settings.max_batch_size)

    def metadata(self) -> ModelMetadata:
        declared = super().metadata()
        return ModelMetadata(declared.inputs, declared.outputs, declared.platform, self._adapter.endpoints)

    async def infer_raw(self, envelopes: list[Envelope]) -> list[RawReply | Exception]:
        return await self._adapter.infer(envelopes)

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        raise NotImplementedError("the mlserver runtime reads requests itself (infer_raw)")

    async def unload(self) -> None:
        adapter = getattr(self, "_adapter", None)
        if adapter is not None:
            await adapter.unload()
