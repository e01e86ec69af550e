"""Decode -> runtime -> encode, for one model, in the process that runs it.

:class:`ModelHandler` is the whole per-request path inside a worker (and in
the main process when ``parallel_workers`` is 0). It never raises: every
failure becomes an :class:`~runtime_core.messages.Outcome` with an error code
and a message fit for the client (no traceback, no server path). Tracebacks
of runtime failures go to the worker's log, naming the model.
"""

from __future__ import annotations

import logging
import re
import time

from runtime_core.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, RuntimeCoreError
from runtime_core.messages import Outcome
from runtime_core.protocol import InferenceResponse, decode_request, encode_response
from runtime_core.runtime import Runtime

log = logging.getLogger("runtime_core.inference")

_PATHS = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-]+){2,}[\\/]?")


def client_message(text: str, limit: int = 500) -> str:
    """``text`` without server paths, cut to ``limit`` characters."""
    text = _PATHS.sub("<path>", text.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ModelHandler:
    """Runs requests for one loaded runtime instance."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.model_name = runtime.context.model_name
        self.version = runtime.context.version

    async def infer(self, body: bytes | memoryview, json_length: int = -1, deadline: float = 0.0) -> Outcome:
        started = time.perf_counter()
        try:
            if deadline and time.time() > deadline:
                raise DeadlineExceeded(f"model {self.model_name!r}: the request's deadline passed before it ran")
            request = decode_request(body, None if json_length < 0 else json_length)
            response = await self.runtime.predict(request)
            if not isinstance(response, InferenceResponse):
                raise TypeError(f"predict returned {type(response).__name__}, not InferenceResponse")
            if request.outputs:
                produced = {t.name: t for t in response.outputs}
                missing = [o.name for o in request.outputs if o.name not in produced]
                if missing:
                    raise InvalidRequest(
                        f"unknown output {missing[0]!r}; model {self.model_name!r} has {', '.join(produced) or 'none'}"
                    )
                response.outputs = [produced[o.name] for o in request.outputs]
            payload, header_length = encode_response(
                response, model_name=self.model_name, model_version=self.version, request=request
            )
            return Outcome(0, payload, -1 if header_length is None else header_length, time.perf_counter() - started)
        except RuntimeCoreError as exc:
            message = exc.message if isinstance(exc, InvalidRequest) else client_message(exc.message)
            return Outcome(exc.code, message.encode(), -1, time.perf_counter() - started)
        except Exception as exc:
            log.error("model %r: inference failed", self.model_name, exc_info=True)
            detail = client_message(str(exc)) or "an internal error"
            message = f"model {self.model_name!r} failed to run the request: {detail}"
            return Outcome(InferenceFailed.code, message.encode(), -1, time.perf_counter() - started)
