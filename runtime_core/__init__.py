"""runtime-core: a multi-model V2 inference server with a worker process group per model.

Plugin authors need only what is re-exported here. Importing this package never
imports aiohttp, so worker processes stay small.
"""

from runtime_core.content import stack_columns
from runtime_core.errors import InferenceFailed, InvalidRequest, RuntimeCoreError
from runtime_core.hookspecs import hookimpl
from runtime_core.runtime import ModelMetadata, Runtime, RuntimeContext, check_requested_outputs
from runtime_core.sanitize import client_message
from runtime_core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "InferenceFailed",
    "InferenceRequest",
    "InferenceResponse",
    "InvalidRequest",
    "ModelMetadata",
    "RequestedOutput",
    "Runtime",
    "RuntimeContext",
    "RuntimeCoreError",
    "Tensor",
    "TensorSpec",
    "__version__",
    "check_requested_outputs",
    "client_message",
    "hookimpl",
    "stack_columns",
]
