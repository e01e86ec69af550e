"""Built-in runtimes, registered through the same entry point as any plugin.

``echo`` returns its inputs as outputs: handy to check a deployment and to
measure the server's own overhead without a framework in the way.
"""

from __future__ import annotations

from runtime_core.hookspecs import hookimpl
from runtime_core.runtime import Runtime
from runtime_core.types import InferenceRequest, InferenceResponse, Tensor


class EchoRuntime(Runtime):
    """Answers each request with its inputs (or the requested subset of them)."""

    name = "echo"
    share_loaded_model = True
    supports_batching = True

    async def load(self) -> None:
        return None

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        wanted = set(request.output_names)
        return InferenceResponse(
            outputs=[Tensor(t.name, t.data, t.datatype) for t in request.inputs if not wanted or t.name in wanted]
        )


@hookimpl
def rc_register_runtimes() -> list[type[Runtime]]:
    return [EchoRuntime]
